"""Reading the `deadletter` topic to its end and sending chosen letters' records again (the
I/O behind `cloudwallet deadletters`; the choosing is `shared/deadletters.py`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.deadletters import Letter, Replay, parse_letters
from shared.kafka_security import client_options
from shared.settings import Settings
from shared.topics import DEAD_LETTER


async def read_letters(settings: Settings, timeout: float = 30.0) -> list[Letter]:
    """Every dead letter on the topic now, read from its beginning to the end offsets it
    had when this started (without joining a group, so reading moves nobody's offsets)."""
    topic = settings.topic(DEAD_LETTER.name)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers,
                                **client_options(settings))
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    wanted = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    if not wanted:  # no such topic (yet): no letters
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                enable_auto_commit=False, **client_options(settings))
    await consumer.start()
    try:
        ends = await consumer.end_offsets(wanted)
        consumer.assign(wanted)
        await consumer.seek_to_beginning(*wanted)
        values: list[tuple[int, bytes | None]] = []
        deadline = time.monotonic() + timeout
        while [tp for tp in wanted if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end in {timeout:.0f} s")
            batch = await consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                values.extend((r.offset, r.value) for r in records if r.offset < ends[tp])
        return parse_letters(values)
    finally:
        await consumer.stop()


async def send_again(settings: Settings, replays: Sequence[Replay]) -> None:
    """Send each record to its topic and partition, and wait until Kafka has them all."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                enable_idempotence=True, **client_options(settings))
    await producer.start()
    try:
        sends = [await producer.send(r.topic, r.value, key=r.key, partition=r.partition,
                                     headers=list(r.headers)) for r in replays]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
