"""The outbox relay against the real broker and database."""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from shared.contracts.clock import ClockTick
from shared.db import create_pool
from shared.outbox import OutboxRelay, Queued, enqueue, outgoing
from shared.topics import CLOCK_TICKS, DEAD_LETTER
from tests.kafka_helpers import KafkaProbe

pytestmark = pytest.mark.integration


def committer(db: asyncpg.Connection, topic: str) -> Callable[[ClockTick], Awaitable[Queued]]:
    """Commits one tick's outbox row per call; returns what `enqueue` gave back."""

    async def committed(tick: ClockTick) -> Queued:
        async with db.transaction():
            return await enqueue(db, "wallet", [outgoing(topic, "clock", tick)])

    return committed


@asynccontextmanager
async def wallet_relay(env: Any, **options: Any) -> AsyncIterator[OutboxRelay]:
    """A relay on the wallet's outbox with its own pool and producer (not started: the
    tests drive its cycles one by one)."""
    pool = await create_pool(env.database_url)
    producer = AIOKafkaProducer(bootstrap_servers=env.settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        yield OutboxRelay(pool, "wallet", producer, **options)
    finally:
        await producer.stop()
        await pool.close()


async def test_rows_committed_before_a_crash_are_published_by_the_next_relay(env, db):
    from datetime import UTC, datetime, timedelta

    ticks = [ClockTick.at_time(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=h))
             for h in range(50)]
    async with db.transaction():
        await enqueue(db, "wallet", [outgoing(env.topic(CLOCK_TICKS.name), "clock", t)
                                     for t in ticks])
    # A transaction that rolls back leaves nothing to publish.
    with pytest.raises(RuntimeError):
        async with db.transaction():
            await enqueue(db, "wallet", [outgoing(env.topic(DEAD_LETTER.name), "x", ticks[0])])
            raise RuntimeError("crash before commit")

    pool = await create_pool(env.database_url)
    producer = AIOKafkaProducer(bootstrap_servers=env.settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        relay = OutboxRelay(pool, "wallet", producer, batch_size=20)
        published = [await relay.drain() for _ in range(4)]
        assert published == [20, 20, 10, 0]
    finally:
        await producer.stop()
        await pool.close()
    assert await db.fetchval("SELECT count(*) FROM wallet.outbox") == 0
    async with KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        # the relay's producer has stopped: all it sent is on the broker, to the end offsets
        seen = await kafka.read_to_end(env.topic(CLOCK_TICKS.name))
        assert [m["at"] for m in seen] == [t.at.isoformat().replace("+00:00", "Z") for t in ticks]
        assert await kafka.read_to_end(env.topic(DEAD_LETTER.name)) == []


async def test_a_row_committed_behind_the_cursor_is_still_published(env, db):
    """Ids are taken at insert, rows become visible at commit: a slow transaction's row can
    sit behind rows already published. The relay looks the skipped id up again."""
    from datetime import UTC, datetime

    ticks = [ClockTick.at_time(datetime(2026, 1, 1, h, tzinfo=UTC)) for h in range(4)]
    topic = env.topic(CLOCK_TICKS.name)
    slow = await asyncpg.connect(env.database_url)
    pool = await create_pool(env.database_url)
    producer = AIOKafkaProducer(bootstrap_servers=env.settings.kafka_bootstrap_servers)
    await producer.start()

    async def committed(tick: ClockTick) -> None:
        async with db.transaction():
            await enqueue(db, "wallet", [outgoing(topic, "clock", tick)])

    try:
        await committed(ticks[0])
        slow_tx = slow.transaction()
        await slow_tx.start()
        await enqueue(slow, "wallet", [outgoing(topic, "clock", ticks[1])])  # id 2, pending
        await committed(ticks[2])
        relay = OutboxRelay(pool, "wallet", producer, batch_size=10)
        assert await relay.drain() == 2  # ids 1 and 3: the cursor moves past id 2
        await slow_tx.commit()
        await committed(ticks[3])
        assert await relay.drain() == 2  # the skipped id 2, looked up again, and id 4
        assert await db.fetchval("SELECT count(*) FROM wallet.outbox") == 0
    finally:
        await producer.stop()
        await pool.close()
        await slow.close()
    async with KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        seen = await kafka.read_to_end(topic)
    assert sorted(m["event_id"] for m in seen) == sorted(str(t.event_id) for t in ticks)


async def test_pushed_rows_go_out_once_in_commit_order_and_a_failed_push_is_drained(env, db):
    """`push` publishes a committed transaction's rows without reading them back. Rows a
    drain is due for go first; pushed rows are deleted after publishing, so a later drain
    does not send them again; rows of a push that failed stay for the next drain."""
    from datetime import UTC, datetime

    ticks = [ClockTick.at_time(datetime(2026, 2, 1, h, tzinfo=UTC)) for h in range(5)]
    topic = env.topic(CLOCK_TICKS.name)
    committed = committer(db, topic)

    async def left() -> int:
        return int(await db.fetchval("SELECT count(*) FROM wallet.outbox"))

    # A poll interval long enough that no drain falls due by the clock in between.
    async with wallet_relay(env, batch_size=10, poll_interval_s=600) as relay:
        await relay.drain()  # what start() does first: nothing there yet
        relay._drain_wanted = False
        await committed(ticks[0])
        relay.notify()  # a writer that only wakes the relay, committed first
        relay.push(await committed(ticks[1]))
        await relay._cycle()  # the drain sends both, in id order; the push has nothing left
        assert await left() == 0

        relay.push(await committed(ticks[2]))
        await relay._cycle()
        assert await left() == 1, "a published push is deleted a little later, in bulk"
        relay.notify()
        await relay._cycle()  # deletes it before draining: not published twice
        assert await left() == 0

        send = relay.sender.send

        async def unreachable(rows: object) -> object:
            raise ConnectionError("broker unreachable")

        relay.sender.send = unreachable  # type: ignore[method-assign]
        relay.push(await committed(ticks[3]))
        with pytest.raises(ConnectionError):
            await relay._cycle()
        assert await left() == 1
        relay.sender.send = send  # type: ignore[method-assign]
        relay.push(await committed(ticks[4]))
        await relay._cycle()  # drains the failed row first, then the rest
        await relay._delete_published()
        assert await left() == 0
    async with KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        seen = await kafka.read_to_end(topic)  # the relay's producer has stopped
    assert [m["event_id"] for m in seen] == [str(t.event_id) for t in ticks]


async def test_a_push_during_a_drain_goes_out_after_rows_notified_meanwhile(env, db):
    """While a drain publishes, one transaction commits and wakes the relay (its rows are
    not in the drain's snapshot), then a later one commits and pushes: the pushed rows
    must not overtake the notified ones."""
    from datetime import UTC, datetime

    ticks = [ClockTick.at_time(datetime(2026, 4, 1, h, tzinfo=UTC)) for h in range(3)]
    topic = env.topic(CLOCK_TICKS.name)
    committed = committer(db, topic)
    async with wallet_relay(env, batch_size=10, poll_interval_s=600) as relay:
        await committed(ticks[0])
        relay.notify()
        send = relay.sender.send
        meanwhile: list[bool] = []

        async def send_while_others_commit(rows: object) -> object:
            if not meanwhile:
                meanwhile.append(True)
                await committed(ticks[1])
                relay.notify()
                relay.push(await committed(ticks[2]))
            return await send(rows)  # type: ignore[arg-type]

        relay.sender.send = send_while_others_commit  # type: ignore[method-assign]
        await relay._cycle()
        await relay._delete_published()
        assert await db.fetchval("SELECT count(*) FROM wallet.outbox") == 0
    async with KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        seen = await kafka.read_to_end(topic)  # the relay's producer has stopped
    assert [m["event_id"] for m in seen] == [str(t.event_id) for t in ticks]


async def test_a_pushed_row_the_cursor_passed_goes_out_before_a_later_row_of_its_key(env, db):
    """A row still uncommitted when a drain's cursor passes it (another key's row committed
    first), then committed and pushed, leaves ahead of its key's next row, which a drain finds
    before the push is published."""
    from datetime import UTC, datetime

    ticks = [ClockTick.at_time(datetime(2026, 5, 1, h, tzinfo=UTC)) for h in range(3)]
    topic = env.topic(CLOCK_TICKS.name)
    slow = await asyncpg.connect(env.database_url)
    try:
        async with wallet_relay(env, batch_size=10, poll_interval_s=600) as relay:
            assert await relay.drain() == 0  # idle: the cursor at the head
            slow_tx = slow.transaction()
            await slow_tx.start()
            first = await enqueue(slow, "wallet", [outgoing(topic, "K", ticks[0])])
            async with db.transaction():
                await enqueue(db, "wallet", [outgoing(topic, "J", ticks[1])])
            assert await relay.drain() == 1  # J; the cursor passes K's uncommitted first row
            await slow_tx.commit()
            relay.push(first)
            async with db.transaction():
                later = await enqueue(db, "wallet", [outgoing(topic, "K", ticks[2])])
            relay.push(later)
            relay.notify()  # a drain is due before the pushes go out
            await relay._cycle()
            await relay._delete_published()
        assert await db.fetchval("SELECT count(*) FROM wallet.outbox") == 0
    finally:
        await slow.close()
    async with KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        seen = await kafka.read_to_end(topic)  # all there is: the producer has stopped
    assert len(seen) == 3
    of_k = [m["event_id"] for m in seen if m["event_id"] != str(ticks[1].event_id)]
    assert of_k == [str(ticks[0].event_id), str(ticks[2].event_id)]
