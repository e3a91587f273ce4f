"""Transactional outbox: events are written in the same transaction as the state change
that causes them, and a relay publishes them to Kafka afterwards (at least once).

Each service schema has `outbox` (messages to publish) and `inbox` (ids of messages
already consumed, for idempotency), created by the service's first migration.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from prometheus_client import Counter

from shared.contracts.base import Envelope

log = structlog.get_logger(__name__)

PUBLISHED = Counter("cloudwallet_outbox_published_total", "Outbox messages published",
                    ["schema"])


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None

    @property
    def row(self) -> Row:
        """As the outbox stores it and `RecordSender` sends it."""
        return (self.topic, self.key, self.value, self.partition)


def outgoing(topic: str, key: object, message: Envelope, partition: int | None = None) -> Outgoing:
    return Outgoing(
        topic=topic,
        key=None if key is None else str(key).encode(),
        value=message.model_dump_json().encode(),
        partition=partition,
    )


# How long an id the cursor skipped is looked for (a transaction open that long is rare;
# the sweep from the head when idle catches it anyway), and at most how many per drain.
GAP_PATIENCE_S = 30.0
MAX_GAPS_PER_DRAIN = 10_000

# Above this many rows COPY beats a multi-row INSERT (a third of the cost per row).
COPY_THRESHOLD = 64

# Pushed rows, once published, are deleted together this much later (or when a drain or
# a full batch comes first).
DELETE_DELAY_S = 0.1

# How many ids of pushed (or drained) rows the relay remembers, to tell them from gaps (or
# not to publish them twice).
RECENT_IDS = 100_000


# (topic, key, value, partition or None): a message as the outbox stores it.
Row = tuple[str, bytes | None, bytes, int | None]

# Outbox rows with their ids, written by a transaction: what `OutboxRelay.push` takes once it
# has committed. None: rows written by COPY, whose ids are not known.
Queued = list[tuple[int, Row]] | None


async def enqueue(conn: asyncpg.Connection, schema: str, messages: Sequence[Outgoing]) -> Queued:
    """Add messages to the outbox, in the caller's transaction, in one statement; returns
    them with their ids (None for a batch large enough to go by COPY)."""
    if not messages:
        return []
    if len(messages) >= COPY_THRESHOLD:
        await conn.copy_records_to_table(
            "outbox", schema_name=schema, columns=["topic", "key", "value", "partition"],
            records=[m.row for m in messages])
        return None
    rows = await conn.fetch(
        f"""INSERT INTO {schema}.outbox (topic, key, value, partition)
            SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::int[])
            RETURNING id""",
        [m.topic for m in messages], [m.key for m in messages],
        [m.value for m in messages], [m.partition for m in messages],
    )
    return queued([r["id"] for r in rows], messages)


def queued(ids: Sequence[int], messages: Sequence[Outgoing]) -> Queued:
    """Pair the ids an INSERT … SELECT FROM unnest returned with its messages: one statement
    takes its ids from the sequence in row order, so sorted ids follow the messages."""
    return list(zip(sorted(ids), (m.row for m in messages), strict=True))


class RecordSender:
    """Sends rows in order as one record batch per partition (aiokafka's create_batch and
    send_batch): a send() per row costs a future, a partitioner call and an accumulator
    append each. Rows keep their order within a partition; the partition is the one Kafka's
    default partitioner gives the key, as for any other producer of the topic."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._partitioner = DefaultPartitioner()
        self._partition_cache: dict[tuple[str, bytes], int] = {}

    async def send(self, rows: Iterable[Row]) -> list[asyncio.Future[Any]]:
        """Hand the rows to the producer; the futures resolve once Kafka has them all.
        Returns when every batch is queued (send_batch waits while the partition's previous
        batch is still queued, which bounds memory), not when it is acknowledged."""
        producer = self._producer
        partitions: dict[str, list[int]] = {}
        batches: dict[tuple[str, int], BatchBuilder] = {}
        sends: list[asyncio.Future[Any]] = []
        for topic, key, value, partition in rows:
            if partition is None:
                partition = self._partition_cache.get((topic, key))  # type: ignore[arg-type]
            if partition is None:
                if topic not in partitions:
                    partitions[topic] = sorted(await producer.partitions_for(topic))
                partition = self._partitioner(key, partitions[topic], partitions[topic])
                if key is not None:
                    self._remember_partition(topic, key, partition)
            batch = batches.get((topic, partition))
            if batch is None:
                batch = batches[(topic, partition)] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                sends.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[(topic, partition)] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        for (topic, partition), batch in batches.items():
            sends.append(await producer.send_batch(batch, topic, partition=partition))
        return sends

    def _remember_partition(self, topic: str, key: bytes, partition: int) -> None:
        # Keys repeat (a wallet's id, a VM's id) and aiokafka hashes them in pure Python.
        if len(self._partition_cache) >= 100_000:
            self._partition_cache.clear()
        self._partition_cache[(topic, key)] = partition


class OutboxRelay:
    """Publishes committed outbox rows in id order, in batches, then deletes them.

    A crash between publishing and deleting publishes those rows again on restart; every
    consumer deduplicates by event id, so that is harmless. SKIP LOCKED lets several
    instances of a service share one outbox.

    Two ways in. `notify()` after a commit: the relay drains the table (`drain`). `push()`
    with the rows a transaction wrote, once it has committed: the relay publishes them
    without reading them back and deletes them by id in bulk a little later, which saves a
    transaction (begin, `DELETE … RETURNING`, commit) per batch on the way from a commit to
    Kafka. One task does both, draining first whenever a drain is due, so rows go out in
    commit order either way (docs/architecture.md names the one exception: a commit whose
    reply was lost). A failed push leaves its rows in the table for the next drain.
    """

    def __init__(self, pool: asyncpg.Pool, schema: str, producer: AIOKafkaProducer,
                 batch_size: int = 5000, poll_interval_s: float = 0.2) -> None:
        self._pool = pool
        self._schema = schema
        self.sender = RecordSender(producer)
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._after_id = 0
        self._gaps: dict[int, float] = {}  # ids skipped by the cursor -> when first seen
        self._drain_wanted = True  # rows left by a crash or another process: drain at start
        self._pushed: list[tuple[int, Row]] = []
        self._published: list[int] = []  # pushed rows published, to delete
        self._delete_due = 0.0
        self._drain_due = 0.0
        self._recently_pushed: set[int] = set()  # not gaps when a drain's cursor passes them
        self._recently_drained: set[int] = set()  # not to publish again when pushed

    def notify(self) -> None:
        self._drain_wanted = True
        self._wake.set()

    def push(self, committed: Queued) -> None:
        """Publish the outbox rows of a transaction that has just committed (None: they
        went by COPY, so drain instead)."""
        if committed is None:
            self.notify()
        elif committed:
            self._pushed.extend(committed)
            self._wake.set()

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self._schema}")

    async def stop(self) -> None:
        """Finish the batch in flight (cancelling it would publish it twice), then drain."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self._delete_published()
        self._pushed.clear()  # still in the table: the drain publishes them
        while await self.drain():
            pass

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self._cycle()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay failed; retrying", schema=self._schema)
                # Everything not yet published is in the table: read it again from the
                # head, in id order, rather than hold pushes or trust the cursor and gaps.
                self._drain_wanted = True
                self._pushed.clear()
                self._after_id = 0
                self._gaps.clear()
                self._recently_pushed.clear()
                await asyncio.sleep(1)
                continue
            if self._pushed or self._drain_wanted:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)
            except TimeoutError:
                self._drain_wanted = True  # rows of another instance, or of a failed drain

    async def _cycle(self) -> None:
        if time.monotonic() >= self._drain_due:
            # Also on a clock while pushes keep the relay busy: rows nobody pushed (a
            # transaction whose commit reply was lost, another process) still go out.
            self._drain_wanted = True
        # Until no drain is wanted: a commit notified while a drain ran may be missing from
        # its snapshot, and a push that came after it must not go out first.
        while self._drain_wanted:
            self._drain_wanted = False
            self._drain_due = time.monotonic() + self._poll_interval_s
            await self._delete_published()  # or the drain would publish them again
            while await self.drain() >= self._batch_size:
                pass
        if self._pushed:
            await self._publish_pushed()
        if len(self._published) >= self._batch_size or (
                self._published and time.monotonic() >= self._delete_due):
            await self._delete_published()

    async def _publish_pushed(self) -> None:
        batch = [p for p in self._pushed if p[0] not in self._recently_drained]
        self._pushed = []
        try:
            await asyncio.gather(*await self.sender.send(row for _, row in batch))
        except Exception:
            self._drain_wanted = True  # the rows are still in the table
            raise
        self._pushed_published(batch)

    def _pushed_published(self, batch: Sequence[tuple[int, Row]]) -> None:
        """Pushed rows are on Kafka: delete them soon, and tell them from gaps meanwhile."""
        if not batch:
            return
        ids = [outbox_id for outbox_id, _ in batch]
        sent = set(ids)
        self._pushed = [p for p in self._pushed if p[0] not in sent]
        if not self._published:
            self._delete_due = time.monotonic() + DELETE_DELAY_S
        self._published += ids
        if len(self._recently_pushed) >= RECENT_IDS:
            self._recently_pushed = set()
        self._recently_pushed.update(ids)
        for outbox_id in ids:
            self._gaps.pop(outbox_id, None)
        PUBLISHED.labels(self._schema).inc(len(batch))

    async def _delete_published(self) -> None:
        if not self._published:
            return
        ids, self._published = self._published, []
        try:
            async with self._pool.acquire() as conn:
                await conn.execute(
                    f"DELETE FROM {self._schema}.outbox WHERE id = ANY($1::bigint[])", ids)
        except BaseException:
            self._published = ids + self._published
            raise

    async def drain(self) -> int:
        """Publish one batch; returns how many rows it published.

        Rows are deleted up front, in one statement; the delete commits only once Kafka has
        acknowledged every row, and rolls back (rows kept) if publishing fails. Reading from
        a cursor past the last id published skips the dead index entries that deleted rows
        leave at the head of the queue until vacuum, which would otherwise make every drain
        of a long backlog slower than the one before. Ids are taken at insert but rows
        appear at commit, so an id skipped by the cursor may still commit: such gaps are
        looked up by id for a while, and the cursor goes back to the head when idle.
        """
        self._forget_old_gaps()
        async with self._pool.acquire() as conn, conn.transaction():
            # The cursor first, the gaps after: a gap that commits in between is then read
            # by the second statement, and never comes after a later row of its key.
            rows = await conn.fetch(
                f"""DELETE FROM {self._schema}.outbox WHERE id IN (
                        SELECT id FROM {self._schema}.outbox WHERE id > $2
                        ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
                    RETURNING id, topic, key, value, partition""",
                self._batch_size, self._after_id,
            )
            late = []
            if self._gaps:
                late = await conn.fetch(
                    f"""DELETE FROM {self._schema}.outbox WHERE id IN (
                            SELECT id FROM {self._schema}.outbox WHERE id = ANY($1::bigint[])
                            FOR UPDATE SKIP LOCKED)
                        RETURNING id, topic, key, value, partition""", list(self._gaps))
            if not rows and not late:
                # Idle: start from the head again next time, in case another instance's
                # failed drain left older rows behind.
                self._after_id = 0
                self._gaps.clear()
                self._recently_pushed.clear()
                return 0
            rows = sorted(rows, key=lambda r: r["id"])
            drained = {r["id"] for r in rows} | {r["id"] for r in late}
            # Pushed rows waiting here are committed too; those older than the newest row
            # found (the cursor passed them before they committed) go with these. Younger
            # ones wait: rows between may be left for the next batch.
            horizon = max(drained, default=0)
            waiting = [p for p in self._pushed if p[0] < horizon and p[0] not in drained
                       and p[0] not in self._recently_drained]
            # All of them in id order: rows of one key are committed in id order (see
            # docs/architecture.md), so order per key holds.
            await asyncio.gather(*await self.sender.send(row for _, row in sorted([
                *((r["id"], (r["topic"], r["key"], r["value"], r["partition"]))
                  for r in [*late, *rows]),
                *waiting])))
            # Only now, published: a failed send rolls back and leaves cursor and gaps be.
            for row in late:
                self._gaps.pop(row["id"], None)
            self._note_gaps(rows)
            self._remember_drained([*late, *rows])
            self._pushed_published(waiting)
        PUBLISHED.labels(self._schema).inc(len(rows) + len(late))
        return len(rows) + len(late)

    def _remember_drained(self, rows: Sequence[asyncpg.Record]) -> None:
        """Rows a drain published are not published again when their push comes after it
        (a commit the drain saw before its handler had pushed)."""
        drained = {r["id"] for r in rows}
        if self._pushed:
            self._pushed = [p for p in self._pushed if p[0] not in drained]
        self._recently_drained = (self._recently_drained | drained
                                  if len(self._recently_drained) < RECENT_IDS else drained)

    def _note_gaps(self, rows: Sequence[asyncpg.Record]) -> None:
        if not rows:
            return
        now = time.monotonic()
        expected = self._after_id + 1 if self._after_id else rows[0]["id"]
        for row in rows:
            for missing in range(expected, min(row["id"], expected + MAX_GAPS_PER_DRAIN)):
                if missing not in self._recently_pushed:  # published already, not a gap
                    self._gaps.setdefault(missing, now)
            expected = row["id"] + 1
        self._after_id = rows[-1]["id"]

    def _forget_old_gaps(self) -> None:
        """A gap still empty after a while was a rolled-back insert (or is left to the
        sweep from the head when idle)."""
        cutoff = time.monotonic() - GAP_PATIENCE_S
        for gap in [g for g, seen in self._gaps.items() if seen < cutoff]:
            del self._gaps[gap]
