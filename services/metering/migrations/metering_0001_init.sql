-- Metering's schema: each VM's runtime state, its raw events, the hours it was metered for
-- (every revision) and how far event time has advanced on each vcenter.events partition.
CREATE SCHEMA IF NOT EXISTS metering;

-- One row per VM: the state after all its accepted events, and the hours closed for it.
CREATE TABLE metering.vms (
    vm_id uuid PRIMARY KEY,
    organisation_id uuid NOT NULL,
    wallet_id uuid NOT NULL,
    -- The vcenter.events partition the VM's events arrive on: that partition's ticks close
    -- its hours.
    source_partition integer NOT NULL CHECK (source_partition >= 0),
    created_at timestamptz NOT NULL,
    deleted_at timestamptz,
    running boolean NOT NULL,
    spec text NOT NULL,  -- current size, as VmSpec JSON
    state_since timestamptz NOT NULL,
    last_event_at timestamptz NOT NULL,
    -- The VM's first open hour: the hour of its creation, or, if the partition had already
    -- closed that hour when the creation arrived, the partition's first open hour. From then
    -- on the VM's hours are closed up to its partition's `closed_until`, so closing an hour
    -- writes nothing to this table.
    open_from timestamptz NOT NULL
) WITH (fillfactor = 90);
CREATE INDEX vms_by_partition ON metering.vms (source_partition);

-- Raw VM events in event time: late or out-of-order events restate hours from these.
CREATE TABLE metering.vm_events (
    event_id uuid PRIMARY KEY,
    vm_id uuid NOT NULL REFERENCES metering.vms (vm_id),
    kind text NOT NULL CHECK (kind IN ('created', 'powered_on', 'resumed', 'powered_off',
                                       'suspended', 'resized', 'deleted')),
    occurred_at timestamptz NOT NULL,
    spec text,  -- VmSpec JSON, for created and resized
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vm_events_by_vm ON metering.vm_events (vm_id, occurred_at);

-- Every published statement of an hour; the highest revision is the one that counts.
CREATE TABLE metering.usage_hours (
    vm_id uuid NOT NULL,
    hour_start timestamptz NOT NULL,
    revision integer NOT NULL CHECK (revision >= 0),
    seconds integer NOT NULL CHECK (seconds BETWEEN 0 AND 3600),
    segments jsonb NOT NULL,
    PRIMARY KEY (vm_id, hour_start, revision)
);

-- Event time per vcenter.events partition, from its clock ticks. Locking a row serialises
-- all work on that partition, also while two instances briefly overlap in a rebalance.
CREATE TABLE metering.partitions (
    source_partition integer PRIMARY KEY,
    up_to timestamptz,         -- the latest tick processed
    closed_until timestamptz   -- every hour ending at or before this is closed
);

CREATE TABLE metering.outbox (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    key bytea,
    value bytea NOT NULL,
    partition integer,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE metering.inbox (
    message_id uuid PRIMARY KEY,
    consumed_at timestamptz NOT NULL DEFAULT now()
);
