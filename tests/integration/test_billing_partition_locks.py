"""Billing's partition locks: whoever waited for one reads what its holder committed, not
the state from before the wait (a statement sees the data as of its start)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any, TypeVar

import asyncpg

from services.billing import repository as repo
from services.billing.domain import low_watermark
from shared.topics import VCENTER_EVENTS

T = TypeVar("T")
PARTITION = 3


async def waiting_for_a_lock(env: Any, pid: int, task: asyncio.Task[Any],
                             timeout: float = 10.0) -> None:
    """Until the backend `pid` waits for a lock (what PostgreSQL says, not a pause)."""
    observer = await asyncpg.connect(env.database_url)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while await observer.fetchval(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid) != "Lock":
            assert not task.done(), "the second transaction did not wait for the lock"
            assert asyncio.get_running_loop().time() < deadline, "no lock wait seen"
            await asyncio.sleep(0.01)
    finally:
        await observer.close()


async def after_holder_commits(env: Any, hold: Callable[[asyncpg.Connection], Awaitable[None]],
                               wait: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run `hold` in a transaction left open, start `wait` in another one (it must block on
    the lock `hold` took), commit the first, and return what `wait` read."""
    holder = await asyncpg.connect(env.database_url)
    waiter = await asyncpg.connect(env.database_url)
    try:
        held = holder.transaction()
        await held.start()
        await hold(holder)

        async def waiting() -> T:
            async with waiter.transaction():
                return await wait(waiter)

        task = asyncio.create_task(waiting())
        await waiting_for_a_lock(env, waiter.get_server_pid(), task)
        await held.commit()
        return await asyncio.wait_for(task, 10)
    finally:
        await holder.close()
        await waiter.close()


async def test_a_usage_batch_that_waited_reads_the_month_its_holder_closed(env, db):
    await db.execute("INSERT INTO billing.usage_partitions VALUES ($1, '2025-12-01')",
                     PARTITION)

    async def close_january(conn: asyncpg.Connection) -> None:
        assert await repo.lock_usage_partitions(conn, [PARTITION]) == {
            PARTITION: date(2025, 12, 1)}
        await repo.set_closed_through(conn, PARTITION, date(2026, 1, 1))

    seen = await after_holder_commits(
        env, close_january, lambda conn: repo.lock_usage_partitions(conn, [PARTITION]))
    assert seen == {PARTITION: date(2026, 1, 1)}


async def test_a_wallet_batch_that_waited_reads_the_watermarks_its_holder_raised(env, db):
    """Else a top-up mirrored while January closes would be booked on January, after its
    statement was saved, and be on no statement."""
    await repo.lock_partitions(db, [PARTITION])  # creates the row
    february = datetime(2026, 2, 1, tzinfo=UTC)

    async def raise_to_february(conn: asyncpg.Connection) -> None:
        await repo.lock_partitions(conn, [PARTITION])
        await repo.raise_watermarks(conn, {(PARTITION, source): february
                                           for source in range(VCENTER_EVENTS.partitions)})

    state = await after_holder_commits(
        env, raise_to_february, lambda conn: repo.lock_partitions(conn, [PARTITION]))
    _, marks = state[PARTITION]
    assert low_watermark(marks, VCENTER_EVENTS.partitions) == february
