-- depends: wallet_0005_content_digests
-- Inbox rows and webhook message ids leave in small batches once older than
-- INBOX_RETENTION_DAYS (shared/retention.py): the indexes find the oldest without reading the
-- tables. Safe because every inbox claim refuses messages dated before the window, and a
-- webhook message's signature is refused five minutes after it was signed.
CREATE INDEX inbox_by_consumed_at ON wallet.inbox (consumed_at);
CREATE INDEX webhook_messages_by_received_at ON wallet.webhook_messages (received_at);
