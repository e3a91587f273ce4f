"""The wallet's record of which API key did what (wallet.key_actions): every operator
action and every money movement asked for over HTTP, written in the transaction of the
change itself."""

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
