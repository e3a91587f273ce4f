-- The wallet's schema: organisations, their wallets, holds (reservations) and the ledger.
CREATE SCHEMA IF NOT EXISTS wallet;

CREATE TABLE wallet.organisations (
    organisation_id uuid PRIMARY KEY,
    name text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('customer', 'reseller')),
    reseller_id uuid REFERENCES wallet.organisations (organisation_id),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The seed's `organisation_wallets`: one wallet per organisation, in one currency.
CREATE TABLE wallet.organisation_wallets (
    wallet_id uuid PRIMARY KEY,
    organisation_id uuid NOT NULL UNIQUE REFERENCES wallet.organisations (organisation_id),
    currency char(3) NOT NULL,
    billing_mode text NOT NULL CHECK (billing_mode IN ('PAYG', 'INVOICE')),
    credit_limit bigint NOT NULL DEFAULT 0 CHECK (credit_limit >= 0),
    balance bigint NOT NULL DEFAULT 0,
    held bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    low_balance_threshold bigint NOT NULL DEFAULT 0 CHECK (low_balance_threshold >= 0),
    low_balance boolean NOT NULL DEFAULT false,
    depleted boolean NOT NULL DEFAULT false,
    auto_topup_threshold bigint,
    auto_topup_amount bigint,
    auto_topup_card_token text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (billing_mode = 'INVOICE' OR credit_limit = 0)
);

CREATE TABLE wallet.holds (
    hold_id uuid PRIMARY KEY,
    request_id uuid NOT NULL UNIQUE,
    wallet_id uuid NOT NULL REFERENCES wallet.organisation_wallets (wallet_id),
    vm_id uuid NOT NULL,
    purpose text NOT NULL,
    amount bigint NOT NULL CHECK (amount > 0),
    remaining bigint NOT NULL CHECK (remaining >= 0),
    status text NOT NULL CHECK (status IN ('pending', 'active', 'released', 'expired', 'consumed')),
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    closed_at timestamptz
);
CREATE INDEX holds_open_by_vm ON wallet.holds (wallet_id, vm_id) WHERE status IN ('pending', 'active');
CREATE INDEX holds_pending_expiry ON wallet.holds (expires_at) WHERE status = 'pending';

-- The seed's `wallet_transactions`: append-only, many per wallet.
CREATE TABLE wallet.wallet_transactions (
    entry_id bigserial PRIMARY KEY,
    wallet_id uuid NOT NULL REFERENCES wallet.organisation_wallets (wallet_id),
    kind text NOT NULL CHECK (kind IN ('top_up', 'usage_debit', 'usage_credit', 'refund', 'adjustment')),
    amount bigint NOT NULL CHECK (amount <> 0),
    balance_after bigint NOT NULL,
    hold_drawn bigint NOT NULL DEFAULT 0 CHECK (hold_drawn >= 0),
    idempotency_key text NOT NULL,
    vm_id uuid,
    refunds_entry_id bigint REFERENCES wallet.wallet_transactions (entry_id),
    description text NOT NULL DEFAULT '',
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (wallet_id, idempotency_key)
);
CREATE INDEX wallet_transactions_by_time ON wallet.wallet_transactions (wallet_id, occurred_at, entry_id);
CREATE INDEX wallet_transactions_refunds ON wallet.wallet_transactions (refunds_entry_id)
    WHERE refunds_entry_id IS NOT NULL;

CREATE TABLE wallet.outbox (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    key bytea,
    value bytea NOT NULL,
    partition integer,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE wallet.inbox (
    message_id uuid PRIMARY KEY,
    consumed_at timestamptz NOT NULL DEFAULT now()
);
