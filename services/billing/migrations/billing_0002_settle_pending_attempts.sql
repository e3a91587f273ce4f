-- depends: billing_0001_init
-- An auto top-up attempt left pending (the gateway was asked, then the process stopped
-- before the outcome committed) is asked again later with the same attempt id, the
-- gateway's idempotency key: the card is charged once, and the wallet credited once. The
-- low balance's correlation and event time are kept to build the outcome's messages.
ALTER TABLE billing.topup_attempts ADD COLUMN correlation_id uuid,
    ADD COLUMN cause_occurred_at timestamptz;
CREATE INDEX topup_attempts_pending ON billing.topup_attempts (created_at)
    WHERE status = 'pending';
