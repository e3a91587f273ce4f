"""The services' state as rows, to say "nothing changed" after a replay or bad input."""

from __future__ import annotations

from collections import Counter
from typing import Any

import asyncpg

SCHEMAS = ("wallet", "provisioning", "metering", "billing")
# Not state: which message ids were seen and what waits to be published (empty at rest).
BOOKKEEPING = {"inbox", "outbox"}
# Rows that say no more than their absence: metering registers each source partition it
# reads, with no progress until an event of a known VM or a tick moves it.
SAME_AS_NO_ROW = {"metering.partitions": "up_to IS NULL AND closed_until IS NULL AND "
                                         "published_until IS NULL AND published_up_to IS NULL"}


async def snapshot(database_url: str, same_as_no_row: dict[str, str] | None = None
                   ) -> dict[str, list[str]]:
    """Every row of every table of the four services, but their inboxes and outboxes, and
    rows that say no more than their absence (`SAME_AS_NO_ROW` unless told otherwise)."""
    same_as_no_row = SAME_AS_NO_ROW if same_as_no_row is None else same_as_no_row
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch(
            """SELECT table_schema, table_name FROM information_schema.tables
               WHERE table_schema = ANY($1::text[]) AND table_type = 'BASE TABLE'
               ORDER BY 1, 2""", list(SCHEMAS))
        state: dict[str, list[str]] = {}
        for t in tables:
            if t["table_name"] in BOOKKEEPING or t["table_name"].startswith("_yoyo"):
                continue
            name = f'{t["table_schema"]}.{t["table_name"]}'
            skip = same_as_no_row.get(name)
            rows = await conn.fetch(f"SELECT to_jsonb(t)::text AS row FROM {name} t"
                                    + (f" WHERE NOT ({skip})" if skip else ""))
            state[name] = sorted(r["row"] for r in rows)
        return state
    finally:
        await conn.close()


def differences(before: dict[str, list[str]], after: dict[str, list[str]]) -> dict[str, Any]:
    """Per table that changed, up to three rows gone and three new."""
    changed: dict[str, Any] = {}
    for table in sorted(set(before) | set(after)):
        old, new = Counter(before.get(table, [])), Counter(after.get(table, []))
        if old != new:
            changed[table] = {"gone": list((old - new).elements())[:3],
                              "new": list((new - old).elements())[:3]}
    return changed
