-- The provisioning service's schema: what it knows of organisations (from wallet.events),
-- the saga state of each provisioning or resize request, the VMs vCenter reported, and
-- the event-time clock. Business time is event time throughout.
CREATE SCHEMA IF NOT EXISTS provisioning;

-- organisation -> wallet, kept from WalletOpened; `suspended` follows WalletDepleted /
-- WalletFundsRestored so VMs that power on while funds are exhausted get suspended too.
CREATE TABLE provisioning.organisations (
    organisation_id uuid PRIMARY KEY,
    wallet_id uuid NOT NULL UNIQUE,
    currency char(3) NOT NULL,
    billing_mode text NOT NULL CHECK (billing_mode IN ('PAYG', 'INVOICE')),
    suspended boolean NOT NULL DEFAULT false,
    opened_at timestamptz NOT NULL
);

-- One row per provisioning (create) or resize request: the saga's whole state.
-- request_id is derived from (organisation, idempotency key), so a repeated key is a
-- primary-key hit, never a second VM.
CREATE TABLE provisioning.requests (
    request_id uuid PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('create', 'resize')),
    idempotency_key text,
    organisation_id uuid NOT NULL REFERENCES provisioning.organisations (organisation_id),
    wallet_id uuid NOT NULL,
    vm_id uuid NOT NULL,
    name text NOT NULL,
    spec jsonb NOT NULL,
    previous_spec jsonb,
    amount bigint NOT NULL CHECK (amount >= 0),
    currency char(3) NOT NULL,
    rate_card_version text NOT NULL,
    status text NOT NULL CHECK (status IN ('awaiting_funds', 'awaiting_vcenter', 'succeeded',
                                           'rejected', 'failed', 'cancelled')),
    reason text,
    hold_id uuid,
    received_at timestamptz NOT NULL,
    deadline timestamptz,
    updated_at timestamptz NOT NULL,
    UNIQUE (organisation_id, kind, idempotency_key)
);
CREATE INDEX requests_due ON provisioning.requests (deadline)
    WHERE status IN ('awaiting_funds', 'awaiting_vcenter');
CREATE INDEX requests_by_vm ON provisioning.requests (vm_id);

CREATE TABLE provisioning.vms (
    vm_id uuid PRIMARY KEY,
    organisation_id uuid NOT NULL,
    wallet_id uuid NOT NULL,
    name text NOT NULL,
    spec jsonb NOT NULL,
    power_state text NOT NULL CHECK (power_state IN ('powered_off', 'running', 'suspended',
                                                     'deleting', 'deleted')),
    suspended_for_funds boolean NOT NULL DEFAULT false,
    created_request_id uuid,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX vms_live_by_organisation ON provisioning.vms (organisation_id)
    WHERE power_state <> 'deleted';

-- The latest event time seen on clock.ticks (one row).
CREATE TABLE provisioning.clock (
    id smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    now timestamptz NOT NULL
);

CREATE TABLE provisioning.outbox (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    key bytea,
    value bytea NOT NULL,
    partition integer,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE provisioning.inbox (
    message_id uuid PRIMARY KEY,
    consumed_at timestamptz NOT NULL DEFAULT now()
);
