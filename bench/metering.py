"""Metering throughput through the real broker and database.

N running VMs are created (and powered on) first; then a simulated week of hourly clock
ticks is published at once and the clock runs until every hour is closed and every usage
event has been published to `metering.usage`, end to end:

  tick in vcenter.events -> hours closed, usage rows committed -> published from memory
  -> metering.usage (acks=all) -> published marks recorded

  closing_per_s       usage events committed (hours closed, usage rows written) per second
  usage_events_per_s  usage events on metering.usage per second (the figure that counts)

Usage: python -m bench.metering [--vms N] [--hours H] [--processes K] [--outbox-batch N]
       (or BENCH_METERING_VMS / BENCH_METERING_HOURS; e.g. --vms 2000 --hours 24 is quick)
  --processes K runs K metering instances in one consumer group, K-1 of them as child
  processes (each with its own outbox relay).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import asyncpg
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from bench.infra import bench_settings
from services.metering.app import MeteringService, create_service
from shared.clock import publish_tick
from shared.contracts.vcenter import VmCreated, VmPoweredOn
from shared.contracts.vm import VmSpec
from shared.logs import configure_logging
from shared.settings import Settings
from shared.topics import METERING_USAGE, VCENTER_EVENTS

WEEK_START = datetime(2026, 3, 2, tzinfo=UTC)
SIZES = [VmSpec.of_tier("small"), VmSpec.of_tier("medium"), VmSpec.of_tier("large"),
         VmSpec(vcpu=6, ram_gb=24, disk_gb=200)]


async def preload(settings: Settings, producer: AIOKafkaProducer, vms: int) -> None:
    """Create and power on `vms` VMs at the start of the week."""
    topic = settings.topic(VCENTER_EVENTS.name)
    sends = []
    for n in range(vms):
        vm_id = uuid4()
        created = VmCreated(vm_id=vm_id, organisation_id=uuid4(), wallet_id=uuid4(),
                            spec=SIZES[n % len(SIZES)], occurred_at=WEEK_START)
        on = VmPoweredOn(vm_id=vm_id, occurred_at=WEEK_START)
        for message in (created, on):
            sends.append(await producer.send(topic, message.model_dump_json().encode(),
                                             key=str(vm_id).encode()))
    await asyncio.gather(*sends)


async def records_on(consumer: AIOKafkaConsumer, topic: str) -> int:
    partitions = [TopicPartition(topic, p) for p in range(METERING_USAGE.partitions)]
    return sum((await consumer.end_offsets(partitions)).values())


def assigned(service: MeteringService) -> int:
    """How many partitions this instance's consumers hold."""
    consumers = [getattr(s, "consumer", None) for s in service.broker.subscribers]
    return sum(len(c.assignment()) for c in consumers if c is not None)


def start_workers(settings: Settings, count: int) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, **{name.upper(): str(getattr(settings, name)) for name in (
        "kafka_bootstrap_servers", "database_url", "topic_prefix", "group_prefix", "log_level",
        "consumer_batch_timeout_ms", "outbox_poll_interval_s")}, "LOG_JSON": "false"}
    argv = [sys.executable, "-m", "bench.metering", "--worker"]
    return [subprocess.Popen(argv, env=env) for _ in range(count)]


async def worker() -> None:
    """A metering instance in its own process, until SIGTERM."""
    configure_logging("WARNING", json=False)
    service = create_service(Settings())
    await service.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await service.stop()


async def run(settings: Settings, vms: int, hours: int, processes: int
              ) -> float:
    service = create_service(settings)
    await service.start()
    workers = start_workers(settings, processes - 1)
    deadline = time.monotonic() + 60
    while processes > 1 and not 0 < assigned(service) < VCENTER_EVENTS.partitions:
        assert time.monotonic() < deadline, "the workers never joined the consumer group"
        await asyncio.sleep(0.2)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    counter = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await counter.start()
    conn = await asyncpg.connect(settings.database_url)
    usage_topic = settings.topic(METERING_USAGE.name)
    try:
        await preload(settings, producer, vms)
        while await conn.fetchval("SELECT count(*) FROM metering.vms WHERE running") < vms:
            await asyncio.sleep(0.1)
        before = await records_on(counter, usage_topic)
        print(f"{vms:,} VMs running; publishing {hours} hourly ticks "
              f"(outbox_batch_size={settings.outbox_batch_size}, {processes} process(es))")

        started = time.perf_counter()
        end = WEEK_START + timedelta(hours=hours)
        for h in range(1, hours + 1):
            await publish_tick(producer, settings, WEEK_START + timedelta(hours=h))
        closed_at = None
        expected = vms * hours
        report = started + 5
        # Polled cheaply (a small table and the topic's end offsets): counting a table of
        # a million rows every few milliseconds would compete with the service itself.
        while True:
            await asyncio.sleep(0.05)
            published = await records_on(counter, usage_topic) - before
            if closed_at is None and await conn.fetchval(
                    "SELECT count(*) FROM metering.partitions WHERE up_to = $1",
                    end) == VCENTER_EVENTS.partitions:
                closed_at = time.perf_counter()
            if time.perf_counter() > report:
                report += 5
                print(f"  t={time.perf_counter() - started:5.1f}s published={published:,}"
                      f"{' (all hours closed)' if closed_at else ''}", flush=True)
            if closed_at is not None and published >= expected and not await conn.fetchval(
                    "SELECT EXISTS (SELECT FROM metering.outbox)"):
                break
        finished = time.perf_counter()
        on_topic = await records_on(counter, usage_topic) - before
        elapsed, closing = finished - started, closed_at - started
        print(f"hours closed (usage committed) in {closing:.2f}s: "
              f"closing_per_s={expected / closing:,.0f}")
        stated = await conn.fetchval("SELECT count(*) FROM metering.usage_hours")
        assert stated == expected, f"{stated} hours stated, expected {expected}"
        assert on_topic >= expected, f"only {on_topic} records on {usage_topic}"
        print(f"{expected:,} usage events on metering.usage in {elapsed:.2f}s "
              f"({on_topic - expected:,} watermarks and redeliveries besides)")
        return expected / elapsed
    finally:
        await conn.close()
        await counter.stop()
        await producer.stop()
        await service.stop()
        for child in workers:
            child.terminate()
            child.wait(30)


async def main(args: argparse.Namespace) -> None:
    configure_logging("WARNING", json=False)
    async with bench_settings(outbox_batch_size=args.outbox_batch) as settings:
        rate = await run(settings, args.vms, args.hours, args.processes)
    print(f"usage_events_per_s={rate:.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=int(os.environ.get("BENCH_METERING_VMS",
                                                                      10_000)))
    parser.add_argument("--hours", type=int, default=int(os.environ.get("BENCH_METERING_HOURS",
                                                                        168)))
    parser.add_argument("--processes", type=int, default=1,
                        help="metering instances in one consumer group, one per process")
    parser.add_argument("--outbox-batch", type=int, default=Settings().outbox_batch_size,
                        help="rows the outbox relay publishes per round (OUTBOX_BATCH_SIZE)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    uvloop.run(worker() if arguments.worker else main(arguments))
