"""The wallet's record of who did what over HTTP: which API key (wallet.key_actions: every
operator action and every money movement asked for with a key, written in the transaction
of the change itself), and which payment webhook messages were applied."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from services.wallet.repository import SCHEMA
from shared.auth import Principal


async def record(conn: asyncpg.Connection, by: Principal, wallet_id: UUID, action: str, *,
                 entry_id: int | None = None, detail: str = "") -> None:
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.key_actions (wallet_id, key_id, action, entry_id, detail)
            VALUES ($1, $2, $3, $4, $5)""", wallet_id, by.key_id, action, entry_id, detail)


async def between(conn: asyncpg.Connection, wallet_id: UUID, start: datetime, end: datetime
                  ) -> list[dict[str, object]]:
    """The actions of [start, to), and every action on a ledger row, for a statement."""
    rows = await conn.fetch(
        f"""SELECT at, key_id, action, entry_id, detail FROM {SCHEMA}.key_actions
            WHERE wallet_id = $1 AND at >= $2 AND at < $3 ORDER BY at, action_id""",
        wallet_id, start, end)
    return [{"at": r["at"].isoformat(), "key_id": r["key_id"], "action": r["action"],
             "entry_id": r["entry_id"], "detail": r["detail"]} for r in rows]


async def keys_of_entries(conn: asyncpg.Connection, entry_ids: list[int]) -> dict[int, str]:
    rows = await conn.fetch(
        f"""SELECT entry_id, key_id FROM {SCHEMA}.key_actions
            WHERE entry_id = ANY($1::bigint[])""", entry_ids)
    return {r["entry_id"]: r["key_id"] for r in rows}


async def webhook_message(conn: asyncpg.Connection, message_id: str
                          ) -> tuple[str, bytes | None] | None:
    """The payment an already applied webhook message carried and its content's digest
    (None if recorded before digests were kept), if it was applied."""
    row = await conn.fetchrow(
        f"SELECT payment_id, digest FROM {SCHEMA}.webhook_messages WHERE message_id = $1",
        message_id)
    return None if row is None else (row["payment_id"], row["digest"])


async def record_webhook_message(conn: asyncpg.Connection, message_id: str,
                                 payment_id: str, digest: bytes) -> None:
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.webhook_messages (message_id, payment_id, digest)
            VALUES ($1, $2, $3) ON CONFLICT (message_id) DO NOTHING""",
        message_id, payment_id, digest)
