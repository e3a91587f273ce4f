"""The test barriers themselves: they wait for the work, and they can fail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from faststream.kafka import KafkaBroker

from shared.consumer import Records, subscribe_batches
from shared.contracts.clock import ClockTick
from shared.topics import CLOCK_TICKS
from tests.kafka_helpers import KafkaProbe


def ticks(n: int) -> list[tuple[str, ClockTick]]:
    return [("clock", ClockTick.at_time(datetime(2026, 6, 1, tzinfo=UTC) + timedelta(hours=h)))
            for h in range(n)]


async def test_wait_consumed_returns_only_after_the_handler_committed_everything_sent(env):
    topic = env.topic(CLOCK_TICKS.name)
    handled: list[int] = []

    async def handler(records: Records) -> None:
        handled.extend(r.offset for r in records)

    broker = KafkaBroker(env.settings.kafka_bootstrap_servers, logger=None)
    subscribe_batches(broker, env.settings, CLOCK_TICKS, "barrier", handler)
    await broker.start()
    try:
        async with KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
            await kafka.publish_many(topic, ticks(25))
            await kafka.wait_consumed(env.settings.group(f"barrier.{CLOCK_TICKS.name}"), topic)
            assert sorted(set(handled)) == list(range(25))
            assert len(await kafka.read_to_end(topic)) == 25
    finally:
        await broker.stop()


async def test_wait_consumed_fails_when_nobody_consumes(env):
    topic = env.topic(CLOCK_TICKS.name)
    async with KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        await kafka.publish_many(topic, ticks(3))
        with pytest.raises(AssertionError, match="has not consumed"):
            await kafka.wait_consumed(env.settings.group("nobody.clock.ticks"), topic,
                                      timeout=1.0)


async def test_read_to_end_sees_what_a_count_reader_would_miss(env):
    topic = env.topic(CLOCK_TICKS.name)
    async with KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        await kafka.publish_many(topic, ticks(3))
        assert len(await kafka.read_count(topic, 2)) >= 2  # stops as soon as it has two
        assert len(await kafka.read_to_end(topic)) == 3
