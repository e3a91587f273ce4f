-- API keys (shared/auth.py) and the organisation directory their ownership checks read.
-- Every service authenticates against this schema; only the wallet writes organisations.
CREATE SCHEMA IF NOT EXISTS auth;

CREATE TABLE auth.api_keys (
    key_id text PRIMARY KEY,
    -- SHA-256 of the whole key; the key itself is shown once and never stored.
    secret_hash bytea NOT NULL,
    name text NOT NULL,
    role text NOT NULL CHECK (role IN ('organisation', 'reseller', 'operator', 'integration')),
    organisation_id uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz,
    CHECK ((role IN ('organisation', 'reseller')) = (organisation_id IS NOT NULL))
);

-- Who is whose customer, so a reseller's key reads its customers' data in every service.
CREATE TABLE auth.organisations (
    organisation_id uuid PRIMARY KEY,
    reseller_id uuid
);
CREATE INDEX organisations_by_reseller ON auth.organisations (reseller_id)
    WHERE reseller_id IS NOT NULL;
