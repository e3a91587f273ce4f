-- depends: metering_0001_init
-- Closing output (each hour's usage and the watermarks) is published straight from memory
-- after its transaction commits, not through the outbox: the usage rows are the durable
-- record, and these columns say how much of it Kafka is known to hold. Output committed
-- but not yet published (a crash in between) is published again from usage_hours.
ALTER TABLE metering.partitions
    ADD COLUMN published_until timestamptz,  -- usage of every hour before this is published
    ADD COLUMN published_up_to timestamptz;  -- the latest watermark published
UPDATE metering.partitions SET published_until = closed_until, published_up_to = up_to;
