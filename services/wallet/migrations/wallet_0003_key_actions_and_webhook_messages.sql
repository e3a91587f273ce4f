-- depends: wallet_0002_usage_entries auth_0001_api_keys
-- Which API key did what to a wallet: opened it, suspended or resumed it, booked a refund
-- (with the ledger row it wrote), changed its auto top-up. Statements show these.
CREATE TABLE wallet.key_actions (
    action_id bigserial PRIMARY KEY,
    wallet_id uuid NOT NULL REFERENCES wallet.organisation_wallets (wallet_id),
    key_id text NOT NULL,
    action text NOT NULL,
    entry_id bigint REFERENCES wallet.wallet_transactions (entry_id),
    detail text NOT NULL DEFAULT '',
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX key_actions_by_wallet ON wallet.key_actions (wallet_id, at);

-- Payment webhook messages already applied, by their webhook-id: a message delivered again
-- is answered without effect (the top-up is also idempotent by its payment id).
CREATE TABLE wallet.webhook_messages (
    message_id text PRIMARY KEY,
    payment_id text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- Organisations opened before API keys existed, in the directory reseller keys read.
INSERT INTO auth.organisations (organisation_id, reseller_id)
    SELECT organisation_id, reseller_id FROM wallet.organisations
    ON CONFLICT (organisation_id) DO NOTHING;
