-- depends: billing_0003_usage_entries
-- When each wallet was opened (event time, from WalletOpened): a wallet gets a statement for
-- every month it existed, also one with no activity at all.
ALTER TABLE billing.wallets ADD COLUMN opened_at timestamptz;
