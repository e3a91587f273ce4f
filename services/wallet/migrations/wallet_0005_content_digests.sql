-- depends: wallet_0004_clock
-- The digest (sha256) of each consumed message's content, next to its id: a message whose id
-- was consumed before with other content is a dead letter, not a redelivery
-- (shared/consumer.py: claim_new). NULL for rows from before: those ids stay redeliveries.
ALTER TABLE wallet.inbox ADD COLUMN digest bytea;

-- Likewise for payment webhook messages: the same webhook-id with another notification is
-- refused (409), not answered as the first one (services/wallet/api.py: payment_webhook).
ALTER TABLE wallet.webhook_messages ADD COLUMN digest bytea;
