-- depends: wallet_0001_init
-- Usage is booked as one ledger row per wallet, hour and revision (billing's usage entry),
-- not one per VM-hour. The row keeps the billing lines it covers, one item per VM in three
-- parallel arrays: each VM's part draws down that VM's holds, caps refunds of that VM, and
-- is listed by the statement's `detail=vm`. Rows booked per line keep `vm_id` instead.
ALTER TABLE wallet.wallet_transactions
    ADD COLUMN vm_ids uuid[],
    ADD COLUMN line_ids uuid[],
    ADD COLUMN vm_amounts bigint[],
    ADD CONSTRAINT usage_parts_one_per_vm CHECK (
        (vm_ids IS NULL AND line_ids IS NULL AND vm_amounts IS NULL)
        OR (cardinality(vm_ids) > 0 AND cardinality(vm_ids) = cardinality(line_ids)
            AND cardinality(vm_ids) = cardinality(vm_amounts)));

-- A refund may name the VM it gives back for (its part of a usage entry). Refunds booked
-- before of a one-VM usage row were that VM's: named so, the per-VM caps count them. Only the
-- VM is filled in; no amount changes.
UPDATE wallet.wallet_transactions r SET vm_id = c.vm_id
    FROM wallet.wallet_transactions c
    WHERE r.kind = 'refund' AND r.vm_id IS NULL AND r.refunds_entry_id = c.entry_id
      AND c.vm_id IS NOT NULL;
