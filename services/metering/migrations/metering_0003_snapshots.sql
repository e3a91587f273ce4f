-- depends: metering_0002_publication
-- Bounded reads: each VM keeps its state made of all its events before `snapshot_at` (the
-- end of the last hours closed for it while it had events in them). Metering reads a VM's
-- events from `snapshot_at` on, not its whole history; an event dated before it (very late)
-- reads the whole history once and makes the snapshot again. NULL: no snapshot yet (a VM
-- whose hours never closed with events in them), the whole history is read, as before.
ALTER TABLE metering.vms
    ADD COLUMN snapshot_at timestamptz,
    ADD COLUMN snapshot_deleted_at timestamptz,
    ADD COLUMN snapshot_running boolean,
    ADD COLUMN snapshot_spec text,
    ADD COLUMN snapshot_since timestamptz,
    ADD COLUMN snapshot_last_event_at timestamptz;

-- Closing hours visits the partition's VMs that may still run: with a VM row kept for good
-- after its deletion, that read would grow with the age of the system without an index on
-- when the VM stopped existing.
CREATE INDEX vms_live_by_partition ON metering.vms
    (source_partition, (coalesce(deleted_at, 'infinity'::timestamptz)));
