"""Publishing to and reading from the real broker in tests, and the barriers that let a test
say "nothing else happened" only after the work it judges has run."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from shared.contracts.base import Envelope
from shared.settings import Settings
from shared.topics import Topic

Offsets = dict[TopicPartition, int]
REPLAYED_HEADER = "replayed"


class KafkaProbe:
    """A producer, readers that see a topic from its beginning, and barriers."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=2)
        self._offsets: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None

    async def __aenter__(self) -> KafkaProbe:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()
        if self._offsets is not None:
            await self._offsets.stop()
        if self._admin is not None:
            await self._admin.close()

    async def publish(self, topic: str, key: object, message: Envelope | bytes,
                      partition: int | None = None) -> None:
        value = message if isinstance(message, bytes) else message.model_dump_json().encode()
        await self.producer.send_and_wait(topic, value, key=str(key).encode() if key else None,
                                          partition=partition)

    async def publish_many(self, topic: str, items: list[tuple[object, Envelope]]) -> None:
        futures = [await self.producer.send(topic, m.model_dump_json().encode(),
                                            key=str(k).encode()) for k, m in items]
        await asyncio.gather(*futures)

    async def publish_spread(self, topic: str, key: object, messages: list[Envelope]) -> None:
        """Round robin over every partition, not by key: one wallet in several consumers'
        batches at once, as after a repartitioning or from a producer ignoring the key."""
        partitions = sorted(await self.producer.partitions_for(topic))
        sends = [await self.producer.send(topic, m.model_dump_json().encode(),
                                          key=str(key).encode(),
                                          partition=partitions[n % len(partitions)])
                 for n, m in enumerate(messages)]
        await asyncio.gather(*sends)

    async def read(self, topic: str, *, until: Callable[[list[dict[str, Any]]], bool],
                   timeout: float = 20.0) -> list[dict[str, Any]]:
        """Read the topic from the start until `until(messages)` holds (or time runs out).

        Only for waiting on something that must come; to count what came, read to a barrier
        with `read_to_end`: a reader stopping at the expected count never sees an extra."""
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=self.bootstrap_servers,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        messages: list[dict[str, Any]] = []
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not until(messages):
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    messages.extend(json.loads(r.value) for r in records)
        finally:
            await consumer.stop()
        return messages

    async def read_count(self, topic: str, count: int, timeout: float = 20.0,
                         where: Callable[[dict[str, Any]], bool] = lambda m: True
                         ) -> list[dict[str, Any]]:
        """Wait until at least `count` messages match (not a proof there are no more)."""
        found = await self.read(topic, until=lambda ms: sum(map(where, ms)) >= count,
                                timeout=timeout)
        return [m for m in found if where(m)]

    # --- barriers --------------------------------------------------------------------------

    async def end_offsets(self, topic: str) -> Offsets:
        """Where each partition of `topic` ends now (the offset its next record will get)."""
        consumer = await self._offset_reader()
        partitions = await self.producer.partitions_for(topic)  # fetches the topic's metadata
        ends: Offsets = await consumer.end_offsets(
            [TopicPartition(topic, p) for p in sorted(partitions)])
        return ends

    async def read_to_end(self, topic: str, ends: Offsets | None = None,
                          timeout: float = 30.0) -> list[dict[str, Any]]:
        """Every message of `topic` up to `ends` (default: its end offsets now), in
        partition order. Read after a barrier, this is all there is, so a count is exact."""
        return [json.loads(r.value) for r in await self.records(topic, ends, timeout)]

    async def records(self, topic: str, ends: Offsets | None = None,
                      timeout: float = 30.0) -> list[ConsumerRecord]:
        """The raw records of `topic` up to `ends` (default: its end offsets now)."""
        ends = ends if ends is not None else await self.end_offsets(topic)
        wanted = {tp: end for tp, end in ends.items() if end > 0}
        if not wanted:
            return []
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers,
                                    enable_auto_commit=False)
        await consumer.start()
        by_partition: dict[TopicPartition, list[ConsumerRecord]] = {tp: [] for tp in wanted}
        try:
            consumer.assign(list(wanted))
            await consumer.seek_to_beginning(*wanted)
            deadline = time.monotonic() + timeout
            while any(await _behind(consumer, wanted)):
                assert time.monotonic() < deadline, f"could not read {topic} to {wanted}"
                batch = await consumer.getmany(timeout_ms=200)
                for tp, records in batch.items():
                    by_partition[tp].extend(r for r in records if r.offset < wanted[tp])
        finally:
            await consumer.stop()
        return [r for tp in sorted(by_partition) for r in by_partition[tp]]

    async def redeliver(self, records: list[ConsumerRecord]) -> None:
        """Send records again, each to its own partition with its key, value and headers,
        plus a `replayed` header: what a consumer sees when a message comes twice."""
        sends = [await self.producer.send(
            r.topic, r.value, key=r.key, partition=r.partition,
            headers=[*r.headers, (REPLAYED_HEADER, b"1")]) for r in records]
        await asyncio.gather(*sends)

    async def committed(self, group: str, topic: str) -> Offsets:
        admin = await self._admin_client()
        offsets = await admin.list_consumer_group_offsets(group)
        return {tp: meta.offset for tp, meta in offsets.items() if tp.topic == topic}

    async def wait_consumed(self, group: str, topic: str, ends: Offsets | None = None,
                            timeout: float = 30.0) -> None:
        """Barrier: wait until consumer group `group` has committed, on every partition of
        `topic`, the end offset the partition had when this was called (or `ends`).

        Our consumers commit a batch's offsets only after the batch's transaction has
        committed (`shared/consumer.py`), so once this returns every message sent to `topic`
        before the call has been handled and its state change is in the database; the
        events it caused are in the service's outbox or, when `wait_outbox_empty` also
        returns, on Kafka. Unlike a sleep, this cannot pass before the work has run, and on
        a slow machine it only takes longer."""
        ends = ends if ends is not None else await self.end_offsets(topic)
        deadline = time.monotonic() + timeout
        while True:
            committed = await self.committed(group, topic)
            behind = {tp: (committed.get(tp, 0), end) for tp, end in ends.items()
                      if end > 0 and committed.get(tp, 0) < end}
            if not behind:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{group} has not consumed {topic}: "
                                     f"(committed, end) {behind}")
            await asyncio.sleep(0.05)

    async def _offset_reader(self) -> AIOKafkaConsumer:
        if self._offsets is None:
            self._offsets = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers,
                                             enable_auto_commit=False)
            await self._offsets.start()
        return self._offsets

    async def _admin_client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
            await self._admin.start()
        return self._admin


async def _behind(consumer: AIOKafkaConsumer, wanted: Offsets) -> list[TopicPartition]:
    return [tp for tp, end in wanted.items() if await consumer.position(tp) < end]


async def wait_outbox_empty(database_url: str, schema: str, timeout: float = 30.0) -> None:
    """Barrier for what a service publishes through its outbox: a row leaves the table only
    after Kafka acknowledged it, so an empty outbox means every event committed so far is
    on its topic."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        while (left := await conn.fetchval(f"SELECT count(*) FROM {schema}.outbox")) > 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"{schema}.outbox still holds {left} rows")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def settled(kafka: KafkaProbe, settings: Settings, service: str,
                  topics: Iterable[Topic], *, consumer: str | None = None,
                  database_url: str | None = None, timeout: float = 30.0) -> None:
    """Barrier over one service: it has handled everything on `topics` sent before this
    call and (given `database_url`) published every event that caused. `consumer` is the
    name its groups carry (default: the service's name); `service` is its schema."""
    for topic in topics:
        await kafka.wait_consumed(settings.group(f"{consumer or service}.{topic.name}"),
                                  settings.topic(topic.name), timeout=timeout)
    if database_url is not None:
        await wait_outbox_empty(database_url, service, timeout)


def subscriptions(service: Any) -> list[tuple[str, str]]:
    """(group, topic) of every consumer a running service has: what its code subscribes,
    not what a test remembers it does."""
    return sorted((sub.group_id, topic) for sub in service.broker.subscribers
                  for topic in sub.topic_names)


async def quiesce(kafka: KafkaProbe, services: Iterable[Any], database_url: str,
                  timeout: float = 60.0) -> None:
    """Barrier over several services that feed each other: each has committed the end
    offsets of all it consumes and emptied its outbox, and a whole pass found the same end
    offsets at its end as at its start, so nothing one service caused is still on its way
    to another. Use it before asserting that nothing else happened."""
    services = list(services)
    watched = sorted({topic for s in services for _, topic in subscriptions(s)})
    deadline = time.monotonic() + timeout
    while True:
        before = [await kafka.end_offsets(topic) for topic in watched]
        for service in services:
            for group, topic in subscriptions(service):
                await kafka.wait_consumed(group, topic,
                                          timeout=max(1.0, deadline - time.monotonic()))
            if service.schema is not None:
                await wait_outbox_empty(database_url, service.schema,
                                        max(1.0, deadline - time.monotonic()))
        if before == [await kafka.end_offsets(topic) for topic in watched]:
            return
        assert time.monotonic() < deadline, "the services did not come to rest"
