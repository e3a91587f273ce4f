"""Publishing event time. A tick goes to `clock.ticks` and into every partition of
`vcenter.events`, so every metering instance sees it in order with its VMs' events."""

from __future__ import annotations

import asyncio
from datetime import datetime

from aiokafka import AIOKafkaProducer

from shared.contracts.clock import ClockTick
from shared.settings import Settings
from shared.topics import CLOCK_TICKS, VCENTER_EVENTS


async def publish_tick(producer: AIOKafkaProducer, settings: Settings, at: datetime) -> ClockTick:
    tick = ClockTick.at_time(at)
    value = tick.model_dump_json().encode()
    events_topic = settings.topic(VCENTER_EVENTS.name)
    partitions = await producer.partitions_for(events_topic)
    sends = [await producer.send(settings.topic(CLOCK_TICKS.name), value, key=b"clock")]
    sends += [await producer.send(events_topic, value, key=b"clock", partition=p)
              for p in sorted(partitions)]
    await asyncio.gather(*sends)
    return tick
