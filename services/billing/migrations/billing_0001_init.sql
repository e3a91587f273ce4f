-- Billing's schema: billing lines, VM months (the cap), watermarks, month closes,
-- the mirror of wallet balance movements, invoices and auto top-up attempts.
CREATE SCHEMA IF NOT EXISTS billing;

-- What billing knows of each wallet (from wallet.opened) and the wallet's latest balance.
CREATE TABLE billing.wallets (
    wallet_id uuid PRIMARY KEY,
    organisation_id uuid NOT NULL,
    organisation_name text NOT NULL,
    currency char(3) NOT NULL,
    billing_mode text NOT NULL CHECK (billing_mode IN ('PAYG', 'INVOICE')),
    usage_partition integer NOT NULL,
    last_balance_after bigint
);
CREATE INDEX wallets_by_partition ON billing.wallets (usage_partition);

-- One line per usage event (vm, hour, revision). `amount` is what the line charges (signed);
-- its line_id is the debit/credit id sent to the wallet.
CREATE TABLE billing.lines (
    line_id uuid PRIMARY KEY,
    usage_id uuid NOT NULL,
    usage_partition integer NOT NULL,
    wallet_id uuid NOT NULL,
    organisation_id uuid NOT NULL,
    vm_id uuid NOT NULL,
    hour_start timestamptz NOT NULL,
    month date NOT NULL,
    booked_month date NOT NULL,
    revision integer NOT NULL CHECK (revision >= 0),
    seconds integer NOT NULL CHECK (seconds BETWEEN 0 AND 3600),
    rated bigint NOT NULL CHECK (rated >= 0),
    hour_cap bigint NOT NULL CHECK (hour_cap >= 0),
    amount bigint NOT NULL,
    stale boolean NOT NULL DEFAULT false,
    currency char(3) NOT NULL,
    rate_card_version text NOT NULL,
    item_code text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (vm_id, hour_start, revision),
    CHECK (NOT stale OR amount = 0)
);
-- Few indexes on purpose: lines are the hot insert path. Per-VM reads use the unique index.
CREATE INDEX lines_by_wallet_booked ON billing.lines (wallet_id, booked_month);

-- Lines the wallet has booked (from wallet.debits_applied). Insert-only, so confirming never
-- rewrites a line. A line of amount 0 has nothing to confirm.
CREATE TABLE billing.confirmations (
    line_id uuid PRIMARY KEY,
    confirmed_at timestamptz NOT NULL DEFAULT now()
);

-- Per VM and calendar month: the cap state. charged = sum(lines.amount) = min(rated, cap).
CREATE TABLE billing.vm_months (
    vm_id uuid NOT NULL,
    month date NOT NULL,
    wallet_id uuid NOT NULL,
    usage_partition integer NOT NULL,
    currency char(3) NOT NULL,
    rated bigint NOT NULL DEFAULT 0,
    cap bigint NOT NULL DEFAULT 0,
    charged bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (vm_id, month)
);
CREATE INDEX vm_months_by_partition ON billing.vm_months (usage_partition, month);
CREATE INDEX vm_months_by_wallet ON billing.vm_months (wallet_id, month);

-- Per partition of metering.usage: the latest watermark from each vcenter.events partition,
-- and the last month closed (lines for it arriving later go on the next statement).
CREATE TABLE billing.usage_partitions (
    usage_partition integer PRIMARY KEY,
    closed_through date
);
CREATE TABLE billing.watermarks (
    usage_partition integer NOT NULL,
    source_partition integer NOT NULL,
    up_to timestamptz NOT NULL,
    PRIMARY KEY (usage_partition, source_partition)
);

-- A wallet's month: pending until every debit on it is confirmed by the wallet (or the
-- grace period runs out), then closed with its statement.
CREATE TABLE billing.month_closes (
    wallet_id uuid NOT NULL,
    month date NOT NULL,
    usage_partition integer NOT NULL,
    status text NOT NULL CHECK (status IN ('pending', 'closed')),
    statement jsonb,
    closed_at timestamptz,
    PRIMARY KEY (wallet_id, month)
);
CREATE INDEX month_closes_pending ON billing.month_closes (usage_partition, month)
    WHERE status = 'pending';

-- Balance movements that do not come from billing lines: top-ups and refunds. booked_month
-- NULL: recorded before any month was open for the wallet; set by the wallet's next close.
CREATE TABLE billing.movements (
    wallet_id uuid NOT NULL,
    movement_key text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('top_up', 'refund')),
    amount bigint NOT NULL,
    booked_month date,
    usage_partition integer NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (wallet_id, movement_key)
);
CREATE INDEX movements_by_partition ON billing.movements (usage_partition, booked_month);

-- Things a statement must report, not hide: rejected usage, debits the wallet booked at a
-- different amount. month NULL: the wallet's next statement.
CREATE TABLE billing.issues (
    issue_id bigserial PRIMARY KEY,
    issue_key text NOT NULL UNIQUE,  -- from what caused it, so a replay records it once
    wallet_id uuid NOT NULL,
    month date,
    detail text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX issues_by_wallet ON billing.issues (wallet_id, month);

CREATE SEQUENCE billing.invoice_numbers;
CREATE TABLE billing.invoices (
    document_number text PRIMARY KEY,
    wallet_id uuid NOT NULL,
    month date NOT NULL,
    organisation_id uuid NOT NULL,
    document jsonb NOT NULL,
    UNIQUE (wallet_id, month)
);

-- Recorded before the gateway is called, so a replay or a crash never charges twice.
CREATE TABLE billing.topup_attempts (
    attempt_id uuid PRIMARY KEY,
    wallet_id uuid NOT NULL,
    low_balance_event_id uuid NOT NULL UNIQUE,
    amount bigint NOT NULL CHECK (amount > 0),
    currency char(3) NOT NULL,
    card_token text NOT NULL,
    status text NOT NULL CHECK (status IN ('pending', 'succeeded', 'declined', 'timed_out')),
    detail text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    decided_at timestamptz
);

CREATE TABLE billing.outbox (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    key bytea,
    value bytea NOT NULL,
    partition integer,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE billing.inbox (
    message_id uuid PRIMARY KEY,
    consumed_at timestamptz NOT NULL DEFAULT now()
);
