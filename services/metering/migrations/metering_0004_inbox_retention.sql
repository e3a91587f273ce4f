-- depends: metering_0003_snapshots
-- Inbox rows leave in small batches once older than INBOX_RETENTION_DAYS (shared/retention.py):
-- the index finds the oldest without reading the table.
CREATE INDEX inbox_by_consumed_at ON metering.inbox (consumed_at);
