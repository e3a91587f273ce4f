"""Batch consumption: parse a Kafka batch record by record, send what cannot be parsed to
the dead-letter topic with the reason, and skip messages already consumed (inbox); a
message whose id was consumed before with other content is a dead letter, not a repeat."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from uuid import UUID

import asyncpg
import structlog
from aiokafka import ConsumerRebalanceListener
from aiokafka.structs import ConsumerRecord, TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import Counter
from pydantic import BaseModel, TypeAdapter, ValidationError

from shared.contracts.base import deterministic_id
from shared.contracts.deadletter import DeadLetter
from shared.outbox import Outgoing, outgoing
from shared.settings import Settings
from shared.topics import DEAD_LETTER, Topic

T = TypeVar("T")

log = structlog.get_logger(__name__)

FAILED_BATCH_PAUSE_S = 0.2

CONSUMED = Counter("cloudwallet_messages_consumed_total", "Kafka records consumed",
                   ["consumer", "topic"])
DEAD_LETTERED = Counter("cloudwallet_dead_letters_total", "Records sent to the dead-letter topic",
                        ["consumer", "topic"])

Records = tuple[ConsumerRecord, ...]


@dataclass(frozen=True, slots=True)
class Incoming(Generic[T]):
    record: ConsumerRecord
    message: T


@dataclass(frozen=True, slots=True)
class Rejected:
    record: ConsumerRecord
    reason: str


def validation_problems(error: ValidationError, whole: str = "message", limit: int = 5
                        ) -> str:
    """The first `limit` problems as `where: what`, without the input (`whole` names a
    problem of the input as a whole)."""
    return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or whole}: {e['msg']}"
                     for e in error.errors()[:limit])


def _reason(error: ValidationError) -> str:
    return "invalid message: " + validation_problems(error)


def parse_records(records: Sequence[ConsumerRecord], adapter: TypeAdapter[T]
                  ) -> tuple[list[Incoming[T]], list[Rejected]]:
    good: list[Incoming[T]] = []
    bad: list[Rejected] = []
    for record in records:
        try:
            good.append(Incoming(record, adapter.validate_json(record.value or b"")))
        except ValidationError as error:
            bad.append(Rejected(record, _reason(error)))
    return good, bad


def dead_letter(settings: Settings, consumer: str, record: ConsumerRecord, reason: str) -> Outgoing:
    DEAD_LETTERED.labels(consumer, record.topic).inc()
    letter = DeadLetter(
        # the record's own id: the same record dead-lettered again (a redelivery) is one letter
        event_id=deterministic_id("deadletter", consumer, record.topic, record.partition,
                                  record.offset),
        consumer=consumer,
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        source_key=record.key.decode(errors="replace") if record.key else None,
        reason=reason[:2000],
        payload=(record.value or b"").decode(errors="replace"),
    )
    return outgoing(settings.topic(DEAD_LETTER.name), record.topic, letter)


def dead_letters(settings: Settings, consumer: str, rejected: Sequence[Rejected]) -> list[Outgoing]:
    return [dead_letter(settings, consumer, r.record, r.reason) for r in rejected]


# The dead letter's reason when a message id the inbox holds comes with other content.
REUSED_ID = "message id reused with other content"

# What a message about the same thing may carry anew: the envelope's identity, time and
# lineage. Claims keyed by a business id (a payment, a request) leave them out of the digest.
ENVELOPE_FIELDS = {"event_id", "occurred_at", "correlation_id", "causation_id"}


def content_digest(message: BaseModel, exclude: set[str] | None = None) -> bytes:
    """sha256 of the parsed message's JSON (pydantic's, fields in the model's order): the
    same content hashes the same whatever the producer's key order, spacing or time offset
    (times are UTC once parsed), so only other content differs. About 1 µs a message."""
    serializer = type(message).__pydantic_serializer__
    return hashlib.sha256(serializer.to_json(message, exclude=exclude)).digest()


def subject_digest(message: BaseModel) -> bytes:
    """The digest for a claim keyed by a business id: the content without the envelope."""
    return content_digest(message, ENVELOPE_FIELDS)


# The claim statement's batch: each id once with the digest of its first occurrence (the one
# booked), in an order (`n`) that makes DISTINCT ON keep the first.
CLAIM_BATCH = """SELECT DISTINCT ON (id) id, digest
    FROM unnest($1::uuid[], $2::bytea[]) WITH ORDINALITY AS b(id, digest, n) ORDER BY id, n"""


async def claim_new(conn: asyncpg.Connection, schema: str, items: Sequence[Incoming[Any]],
                    id_of: Callable[[Any], UUID] = lambda m: m.event_id,
                    digest_of: Callable[[Any], bytes] = content_digest
                    ) -> tuple[list[Incoming[Any]], list[Rejected]]:
    """Record the batch's message ids, with their content's digest, in the inbox: the
    messages not seen before (each id once), and those refused because their id was seen
    (before, or earlier in the batch) with other content (`REUSED_ID`). One round trip;
    must run in the handler's transaction."""
    if not items:
        return [], []
    ids = [id_of(i.message) for i in items]
    digests = [digest_of(i.message) for i in items]
    # The statement's sub-queries share one snapshot: `seen` reads the rows stored before
    # it, never the ones `claimed` inserts.
    rows = await conn.fetch(
        f"""WITH batch AS ({CLAIM_BATCH}), claimed AS (
                INSERT INTO {schema}.inbox (message_id, digest) SELECT id, digest FROM batch
                ON CONFLICT DO NOTHING RETURNING message_id
            )
            SELECT message_id, true AS fresh, NULL::bytea AS digest FROM claimed
            UNION ALL
            SELECT i.message_id, false, i.digest FROM {schema}.inbox i
            JOIN batch b ON b.id = i.message_id""", ids, digests)
    fresh = {r["message_id"] for r in rows if r["fresh"]}
    stored = {r["message_id"]: r["digest"] for r in rows if not r["fresh"]}
    return judge_claims(items, ids, digests, fresh, stored)


def judge_claims(items: Sequence[Incoming[T]], ids: Sequence[UUID], digests: Sequence[bytes],
                 fresh: Set[UUID], stored: Mapping[UUID, bytes | None]
                 ) -> tuple[list[Incoming[T]], list[Rejected]]:
    """Split a claimed batch: the items to handle (ids the claim inserted, each once) and
    those refused as `REUSED_ID` (content other than what their id was first consumed
    with: the stored digest, or the batch's first occurrence). The rest are redeliveries,
    skipped; so is an id stored without a digest (before digests were kept) or one a
    concurrent transaction stored after this one's snapshot (`stored` does not name it)."""
    kept: list[Incoming[T]] = []
    refused: list[Rejected] = []
    first: dict[UUID, bytes] = {}
    for item, message_id, digest in zip(items, ids, digests, strict=True):
        if message_id in fresh and message_id not in first:
            first[message_id] = digest
            kept.append(item)
            continue
        known = first.get(message_id, stored.get(message_id))
        if known is not None and known != digest:
            refused.append(Rejected(item.record, REUSED_ID))
    return kept, refused


BatchHandler = Callable[[Records], Awaitable[None]]


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before partitions go, the background commits of batches handled on them are sent (so
    their next owner does not handle them again); once partitions come, `on_assigned`."""

    def __init__(self, on_assigned: Callable[[], None] | None,
                 commits: BackgroundCommits | None) -> None:
        self._on_assigned = on_assigned
        self._commits = commits

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if self._commits is not None:
            await self._commits.flush()  # bounded: a commit that hangs holds up the group

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if self._on_assigned is not None:
            self._on_assigned()


def subscribe_batches(broker: KafkaBroker, settings: Settings, topic: Topic, consumer: str,
                      handler: BatchHandler, *, commit_in_background: bool = False,
                      on_assigned: Callable[[], None] | None = None
                      ) -> BackgroundCommits | None:
    """Consume `topic` in batches; offsets are committed only after `handler` returns, and a
    failing batch is redelivered (at least once). The group is `<consumer>.<topic>`: one
    group per subscription, so joining one topic never rebalances another.

    `commit_in_background`: the next poll does not wait for the batch's offsets to reach
    the group coordinator (a round trip the broker holds up to 5 ms to batch its writes);
    `BackgroundCommits` sends them, the batch's own offsets, not the consumer's position.
    `on_assigned` runs whenever partitions are assigned, before their first batch."""

    async def raw(message: Any) -> Any:
        return None

    consumed = CONSUMED.labels(consumer, topic.name)
    commits = BackgroundCommits() if commit_in_background else None
    subscriber = broker.subscriber(
        settings.topic(topic.name),
        group_id=settings.group(f"{consumer}.{topic.name}"),
        batch=True,
        max_records=settings.consumer_batch_size,
        batch_timeout_ms=settings.consumer_batch_timeout_ms,
        auto_offset_reset="earliest",
        # Our own commits and rewinds: FastStream's nack stops seeking at the first
        # partition revoked mid-batch, and the partitions after it would go on past the
        # failed records; its ack commits the consumer's position, not the batch's offsets.
        ack_policy=AckPolicy.MANUAL,
        decoder=raw,
        listener=_Rebalance(on_assigned, commits) if on_assigned or commits else None,
        title=f"{consumer}:{topic.name}",
        description=topic.description,
    )

    async def on_batch(body: Any, message: KafkaMessage) -> None:
        records: Records = message.raw_message  # type: ignore[assignment]
        consumed.inc(len(records))
        try:
            await handler(records)
        except Exception:
            # The broker is built without a logger: say it here, and pause, so a batch
            # that keeps failing comes again a few times a second, not in a tight loop.
            log.exception("batch failed; it comes again", consumer=consumer,
                          topic=topic.name, records=len(records))
            rewind(message.consumer, records)
            await asyncio.sleep(FAILED_BATCH_PAUSE_S)
            raise
        if commits is not None:
            commits.after(message.consumer, records)
            return
        kafka_consumer: Any = message.consumer  # aiokafka's, whose commit takes offsets
        try:
            await kafka_consumer.commit(assigned_offsets(kafka_consumer, records))
        except Exception as error:  # e.g. a rebalance took the partitions: they come again
            log.warning("offset commit failed; those records may come again",
                        consumer=consumer, topic=topic.name, error=str(error))

    subscriber(on_batch)
    _poll_without_pause(subscriber, settings)
    return commits  # to flush before the consumer stops (stopping revokes nothing)


def rewind(consumer: Any, records: Records) -> None:
    """Seek each partition of a failed batch back to its first record, so the batch comes
    again; a partition revoked meanwhile is skipped (its new owner starts from the last
    commit, which is at or before the batch), where a seek would raise and leave the
    partitions after it unrewound."""
    earliest: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        earliest[tp] = min(earliest.get(tp, r.offset), r.offset)
    assigned = consumer.assignment()
    for tp, offset in earliest.items():
        if tp in assigned:
            consumer.seek(tp, offset)


def next_offsets(records: Records) -> dict[TopicPartition, int]:
    """The offsets to commit once a batch is handled: past its last record per partition."""
    offsets: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
    return offsets


def assigned_offsets(consumer: Any, records: Records) -> dict[TopicPartition, int]:
    """`next_offsets` of the partitions still assigned."""
    return _still_assigned(consumer, next_offsets(records))


def _still_assigned(consumer: Any, offsets: dict[TopicPartition, int]
                    ) -> dict[TopicPartition, int]:
    """Offsets to commit, without the partitions revoked meanwhile: a commit naming one
    fails as a whole (its new owner starts from the last commit, at or before these)."""
    assigned = consumer.assignment()
    return {tp: offset for tp, offset in offsets.items() if tp in assigned}


class BackgroundCommits:
    """Commits the offsets of handled batches while the consumer goes on polling: one
    commit in flight, later batches' offsets merged into the next. Before a rebalance takes
    partitions, what is due is committed (`flush`). A commit lost (a crash, a failed commit)
    only means those records come again, and every consumer is idempotent."""

    FLUSH_TIMEOUT_S = 10.0

    def __init__(self) -> None:
        self._due: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._consumer: Any = None
        self._rounds_started = 0  # commits sent
        self._rounds_finished = 0  # commits answered (or failed)
        self._progress = asyncio.Event()

    def after(self, consumer: Any, records: Records) -> None:
        self._consumer = consumer
        for tp, offset in next_offsets(records).items():
            self._due[tp] = max(self._due.get(tp, 0), offset)
        self._ensure_running()

    async def flush(self) -> None:
        """Commit what is due now, within `FLUSH_TIMEOUT_S`: the commit in flight and the
        next one (which takes everything due now), not the ones later batches keep adding."""
        in_flight = self._rounds_started > self._rounds_finished
        target = self._rounds_started + (1 if self._due else 0)
        if not in_flight and not self._due:
            return
        self._ensure_running()
        try:
            async with asyncio.timeout(self.FLUSH_TIMEOUT_S):
                while self._rounds_finished < target and not self._stopped():
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            log.warning("offset commit still in flight; those records may come again")

    def _ensure_running(self) -> None:
        if self._due and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._commit(self._consumer))

    def _stopped(self) -> bool:
        # the loop ends on a failed commit: what it left due waits for the next batch
        return self._task is None or self._task.done()

    async def _commit(self, consumer: Any) -> None:
        try:
            while self._due:
                due, self._due = _still_assigned(consumer, self._due), {}
                if not due:
                    continue
                self._rounds_started += 1
                try:
                    await consumer.commit(due)
                except Exception as error:
                    log.warning("offset commit failed; those records may come again",
                                error=str(error))
                    return
                finally:
                    self._rounds_finished += 1
                    self._progress.set()
        finally:
            self._progress.set()  # a flush waiting on a loop that ended stops waiting


def _poll_without_pause(subscriber: Any, settings: Settings) -> None:
    """FastStream's batch subscriber (0.7) sleeps another `batch_timeout_ms` after every empty
    poll, although `getmany` has just waited that long for records: a record arriving during
    that sleep waited for nothing (up to the whole timeout, 20 ms by our old default), on
    every hop of the provisioning saga. Polls here go straight back to `getmany`, which
    returns as soon as records arrive."""
    timeout_ms, max_records = settings.consumer_batch_timeout_ms, settings.consumer_batch_size

    async def get_msg(consumer: Any) -> tuple[ConsumerRecord, ...]:
        batches = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        return tuple(record for records in batches.values() for record in records)

    subscriber.get_msg = get_msg
