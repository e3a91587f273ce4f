"""Keeping technical tables bounded: inbox rows (message ids consumed) are removed once no
redelivery can bring their message back, and a message older than that is refused by its
event time instead of being booked a second time.

The window (`INBOX_RETENTION_DAYS`, default 45) is longer than the longest retention of any
topic a pruned inbox guards (30 days, `shared/topics.py`) plus margin: Kafka itself no
longer holds a message that old, so only an operator's replay of a dead letter or a
producer's very late retry could bring it back. Such a message is refused by its event
time: one dated more than `INBOX_RETENTION_DAYS - INBOX_REFUSAL_MARGIN_DAYS` before the
consumer's event clock (its latest clock tick; in production ticks follow the wall clock)
becomes a dead letter naming the reason. The margin covers a message dated ahead of the
wall clock that consumed it (producer clock skew) and a clock tick behind the wall clock:
a row is pruned only when its message is surely refused. Before its first tick a consumer
refuses nothing (and in production the clock ticks long before a row is 45 days old).

Rows are deleted by their wall-clock age (`consumed_at`), in small batches with a pause
between them, by a background task of the service runtime (`InboxPruner`), never by a
consumer, so a consumer never waits on a long delete. With `EVENT_CLOCK=ticks` (a simulation,
whose event clock is not the wall clock) nothing is pruned: there a row's wall age says
nothing about its message's event time.

Money tables (ledger, usage entries, lines, statements, invoices) are never pruned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import structlog

from shared.consumer import Incoming, Rejected

log = structlog.get_logger(__name__)


def oldest_accepted(event_now: datetime, retention: timedelta, margin: timedelta) -> datetime:
    """Messages dated before this are refused: their inbox rows may be gone."""
    if margin >= retention:
        raise ValueError("the refusal margin must be shorter than the inbox retention")
    return event_now - (retention - margin)


def refuse_expired(items: Sequence[Incoming[Any]], oldest: datetime
                   ) -> tuple[list[Incoming[Any]], list[Rejected]]:
    """Split a batch into messages young enough for the inbox to judge and refusals."""
    kept: list[Incoming[Any]] = []
    refused: list[Rejected] = []
    for item in items:
        at = item.message.occurred_at
        if at < oldest:
            refused.append(Rejected(item.record, (
                f"{item.message.type} {item.message.event_id} occurred at {at.isoformat()}, "
                f"before {oldest.isoformat()}: older than the inbox window "
                "(INBOX_RETENTION_DAYS), so it may have been consumed already")))
        else:
            kept.append(item)
    return kept, refused


@dataclass(frozen=True, slots=True)
class PrunedTable:
    """A table rows leave once older than the window, by a timestamp column with an index."""

    table: str  # schema-qualified
    column: str = "consumed_at"


async def prune_once(pool: asyncpg.Pool, table: PrunedTable, retention: timedelta,
                     batch: int) -> int:
    """Delete up to `batch` rows older than `retention`; returns how many went. Each batch is
    its own short transaction, ordered by the indexed column, so it locks few rows briefly."""
    status = await pool.execute(
        f"""DELETE FROM {table.table} WHERE ctid IN (
                SELECT ctid FROM {table.table} WHERE {table.column} < now() - $1::interval
                ORDER BY {table.column} LIMIT $2)""", retention, batch)
    return int(status.split()[-1])


class InboxPruner:
    """Every `interval_s`, deletes expired rows of each table in batches of `batch` with
    `pause_s` between batches, until none are left."""

    def __init__(self, pool: asyncpg.Pool, tables: Sequence[PrunedTable], retention: timedelta,
                 *, batch: int = 1000, interval_s: float = 300.0, pause_s: float = 0.05
                 ) -> None:
        self.pool, self.tables, self.retention = pool, list(tables), retention
        self.batch, self.interval_s, self.pause_s = batch, interval_s, pause_s
        self.pruned = {t.table: 0 for t in self.tables}
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        total = 0
        for table in self.tables:
            while True:
                gone = await prune_once(self.pool, table, self.retention, self.batch)
                self.pruned[table.table] += gone
                total += gone
                if gone < self.batch:
                    break
                await asyncio.sleep(self.pause_s)
        return total

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="inbox-pruner")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                gone = await self.run_once()
                if gone:
                    log.info("inbox rows pruned", rows=gone)
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed pass is tried again at the next one
                log.exception("inbox pruning failed")
            await asyncio.sleep(self.interval_s)
