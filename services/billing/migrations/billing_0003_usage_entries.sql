-- depends: billing_0002_settle_pending_attempts
-- Usage reaches a wallet as one entry per wallet, hour, revision and kind of a usage batch,
-- not one per line. An entry names the lines it holds (parallel arrays, one item per VM), so
-- the entry sent again after a redelivery is the same entry, and the wallet confirms entries,
-- not lines: `confirmed` replaces the confirmations table (one row per line).
CREATE TABLE billing.usage_entries (
    entry_id uuid PRIMARY KEY,
    wallet_id uuid NOT NULL,
    hour_start timestamptz NOT NULL,
    revision integer NOT NULL CHECK (revision >= 0),
    kind text NOT NULL CHECK (kind IN ('debit', 'credit')),
    amount bigint NOT NULL CHECK (amount > 0),
    currency char(3) NOT NULL,
    vm_ids uuid[] NOT NULL,
    line_ids uuid[] NOT NULL,
    amounts bigint[] NOT NULL,
    confirmed boolean NOT NULL DEFAULT false,
    CHECK (cardinality(vm_ids) = cardinality(line_ids)
           AND cardinality(vm_ids) = cardinality(amounts) AND cardinality(vm_ids) > 0)
);

-- The entry that charged the line (none for a line of amount 0).
ALTER TABLE billing.lines ADD COLUMN entry_id uuid;

-- Lines charged before: each its own entry, under its line id (the id the wallet booked it
-- by and confirmed), confirmed if the wallet had confirmed it.
INSERT INTO billing.usage_entries (entry_id, wallet_id, hour_start, revision, kind, amount,
        currency, vm_ids, line_ids, amounts, confirmed)
    SELECT l.line_id, l.wallet_id, l.hour_start, l.revision,
           CASE WHEN l.amount > 0 THEN 'debit' ELSE 'credit' END, abs(l.amount), l.currency,
           ARRAY[l.vm_id], ARRAY[l.line_id], ARRAY[abs(l.amount)],
           EXISTS (SELECT 1 FROM billing.confirmations c WHERE c.line_id = l.line_id)
    FROM billing.lines l WHERE l.amount <> 0;
UPDATE billing.lines SET entry_id = line_id WHERE amount <> 0;

DROP TABLE billing.confirmations;
