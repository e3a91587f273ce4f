-- depends: provisioning_0003_resize_keys_per_vm
-- Inbox rows leave in small batches once older than INBOX_RETENTION_DAYS (shared/retention.py):
-- the index finds the oldest without reading the table.
CREATE INDEX inbox_by_consumed_at ON provisioning.inbox (consumed_at);
