-- depends: wallet_0003_key_actions_and_webhook_messages
-- The latest clock tick the wallet saw: event time for what happens by HTTP (an organisation
-- opened, a refund, a payment with no time of its own), see shared/event_time.py.
CREATE TABLE wallet.clock (
    id smallint PRIMARY KEY CHECK (id = 1),
    now timestamptz NOT NULL
);
