"""Offset commits of `subscribe_batches` on the real broker, awaited after each batch or
in the background (`commit_in_background=True`): a failing batch comes again, and the
offsets of handled batches reach the group coordinator."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka import KafkaBroker

from shared.consumer import Records, subscribe_batches
from shared.contracts.clock import ClockTick
from shared.topics import CLOCK_TICKS
from tests.kafka_helpers import KafkaProbe


@pytest.mark.parametrize("in_background", [False, True])
async def test_a_failing_batch_comes_again_and_handled_offsets_are_committed(env, in_background):
    topic = env.topic(CLOCK_TICKS.name)  # one partition: offsets 0..n-1
    ticks = [ClockTick.at_time(datetime(2026, 3, 1, tzinfo=UTC) + timedelta(hours=h))
             for h in range(30)]
    handled: list[int] = []
    failures: list[int] = []

    async def handler(records: Records) -> None:
        if not failures:
            failures.append(len(records))
            raise RuntimeError("the batch's transaction failed")
        handled.extend(r.offset for r in records)

    broker = KafkaBroker(env.settings.kafka_bootstrap_servers, logger=None)
    subscribe_batches(broker, env.settings, CLOCK_TICKS, "test", handler,
                      commit_in_background=in_background)
    await broker.start()
    admin = AIOKafkaAdminClient(bootstrap_servers=env.settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        async with KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
            await kafka.publish_many(topic, [("clock", t) for t in ticks])
        deadline = time.monotonic() + 20
        while sorted(set(handled)) != list(range(30)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert failures, "no batch went through the failing handler"
        assert sorted(set(handled)) == list(range(30)), "records of the failed batch are lost"

        group = env.settings.group(f"test.{CLOCK_TICKS.name}")
        committed: dict[object, object] = {}
        while time.monotonic() < deadline:
            committed = {tp.partition: meta.offset for tp, meta in
                         (await admin.list_consumer_group_offsets(group)).items()}
            if committed.get(0) == 30:
                break
            await asyncio.sleep(0.05)
        assert committed.get(0) == 30, f"committed offsets {committed}"
    finally:
        await admin.close()
        await broker.stop()
