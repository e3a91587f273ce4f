-- depends: billing_0004_wallet_opened_at
-- Closing a month reads what it needs by key, not the whole history (issue #18): the
-- wallet's unconfirmed entries (a handful: the wallet confirms within seconds) and the sum of
-- its confirmed entries from an index alone. Before, both read every entry of every wallet
-- once per wallet closed.
CREATE INDEX usage_entries_unconfirmed ON billing.usage_entries (wallet_id)
    WHERE NOT confirmed;
CREATE INDEX usage_entries_confirmed_by_wallet ON billing.usage_entries (wallet_id)
    INCLUDE (kind, amount) WHERE confirmed;
