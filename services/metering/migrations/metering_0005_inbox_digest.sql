-- depends: metering_0004_inbox_retention
-- The digest (sha256) of each consumed message's content, next to its id: a message whose id
-- was consumed before with other content is a dead letter, not a redelivery
-- (shared/consumer.py: claim_new). NULL for rows from before: those ids stay redeliveries.
ALTER TABLE metering.inbox ADD COLUMN digest bytea;
