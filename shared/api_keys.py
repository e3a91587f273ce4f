"""The API keys' store in PostgreSQL (schema `auth`): issue, list, revoke, authenticate, and
the organisation directory a reseller's key reads its customers from."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg

from shared.auth import (
    InvalidKey,
    Principal,
    Role,
    StoredKey,
    check_key_request,
    generate_key,
    key_id_of,
    verify,
)

SCHEMA = "auth"


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    token: str  # the only time the key is seen
    role: Role
    organisation_id: UUID | None
    expires_at: datetime | None


async def issue_key(conn: asyncpg.Connection | asyncpg.Pool, *, name: str, role: Role | str,
                    organisation_id: UUID | None = None,
                    valid_for: timedelta | None = None) -> IssuedKey:
    """Create a key; the demo, benchmarks and tests call this for the keys they need."""
    role = Role(role)
    check_key_request(role, organisation_id)
    new = generate_key()
    expires_at = datetime.now(UTC) + valid_for if valid_for is not None else None
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.api_keys (key_id, secret_hash, name, role, organisation_id,
                                           expires_at)
            VALUES ($1, $2, $3, $4, $5, $6)""",
        new.key_id, new.secret_hash, name, role.value, organisation_id, expires_at)
    return IssuedKey(new.key_id, new.token, role, organisation_id, expires_at)


async def issue_key_at(database_url: str, *, name: str, role: Role | str,
                       organisation_id: UUID | None = None,
                       valid_for: timedelta | None = None) -> str:
    """`issue_key` on its own connection, returning the key: for the demo and benchmarks,
    which drive the services from outside."""
    conn = await asyncpg.connect(database_url)
    try:
        issued = await issue_key(conn, name=name, role=role, organisation_id=organisation_id,
                                 valid_for=valid_for)
    finally:
        await conn.close()
    return issued.token


async def list_keys(conn: asyncpg.Connection | asyncpg.Pool) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""SELECT key_id, name, role, organisation_id, created_at, expires_at, revoked_at
            FROM {SCHEMA}.api_keys ORDER BY created_at, key_id""")
    return rows


async def revoke_key(conn: asyncpg.Connection | asyncpg.Pool, key_id: str) -> bool:
    """True if the key existed and was not revoked before."""
    revoked = await conn.fetchval(
        f"""UPDATE {SCHEMA}.api_keys SET revoked_at = now()
            WHERE key_id = $1 AND revoked_at IS NULL RETURNING key_id""", key_id)
    return revoked is not None


async def authenticate(conn: asyncpg.Connection | asyncpg.Pool, token: str,
                       now: datetime | None = None) -> Principal:
    """The caller the key belongs to, with a reseller's customers; InvalidKey otherwise.
    One indexed read per request."""
    key_id = key_id_of(token)
    row = await conn.fetchrow(
        f"""SELECT k.key_id, k.secret_hash, k.role, k.organisation_id, k.expires_at,
                   k.revoked_at,
                   CASE WHEN k.role = 'reseller' THEN ARRAY(
                       SELECT o.organisation_id FROM {SCHEMA}.organisations o
                       WHERE o.reseller_id = k.organisation_id) END AS customers
            FROM {SCHEMA}.api_keys k WHERE k.key_id = $1""", key_id)
    stored = None if row is None else StoredKey(
        row["key_id"], bytes(row["secret_hash"]), Role(row["role"]), row["organisation_id"],
        row["expires_at"], row["revoked_at"], frozenset(row["customers"] or ()))
    return verify(token, stored, now or datetime.now(UTC))


async def register_organisation(conn: asyncpg.Connection, organisation_id: UUID,
                                reseller_id: UUID | None) -> None:
    """Called by the wallet in the transaction that opens the organisation."""
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.organisations (organisation_id, reseller_id) VALUES ($1, $2)
            ON CONFLICT (organisation_id) DO NOTHING""", organisation_id, reseller_id)


__all__ = ["InvalidKey", "IssuedKey", "authenticate", "issue_key", "issue_key_at", "list_keys",
           "register_organisation", "revoke_key"]
