"""Usage rated and debited per second, end to end, through the real broker and database.

  pipeline_events_per_s  HourlyUsage on metering.usage -> billing rates it, stores its line
                         and sends its wallet entry (one per wallet, hour and batch) -> the
                         wallet has committed the entry to the ledger; a backlog, timed from
                         billing's first line until the wallet holds every line
  raw_kafka_events_per_s the same messages through a bare aiokafka consume-and-produce loop
                         (no parsing, no database), on the same backlog: the ceiling Kafka
                         and this machine allow
  p50_ms, p99_ms         at a steady --latency-rate (2,000) usage events/s, from just before
                         an event's publication on metering.usage to its wallet entry seen
                         committed (fresh servers' database and topics)

Billing and the wallet run as their own processes (`cloudwallet serve`), as deployed; the
CPU seconds each used during the run are printed, to show where the time goes.

With `--profile`, billing and the wallet run the backlog under cProfile, and the functions
each spent most of its time in are printed (the figures of such a run are not comparable).

Usage: python -m bench.pipeline [--events N] [--wallets N] [--vms N] [--latency-rate N]
                                [--latency-seconds S] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import pstats
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from bench.infra import ServiceProcesses, bench_settings
from bench.wallet import open_wallets, produce
from services.billing.domain import line_id
from shared.contracts.metering import HourlyUsage, UsageSegment, usage_id
from shared.contracts.vm import VmSpec
from shared.logs import configure_logging
from shared.settings import Settings
from shared.topics import BILLING_DEBITS, METERING_USAGE, Topic

START = datetime(2026, 1, 1, tzinfo=UTC)
MEDIUM = VmSpec.of_tier("medium")
# Usage lines in the wallet's usage debits: an entry's VMs, or one for a row booked per line.
LINES_BOOKED = "coalesce(sum(coalesce(cardinality(vm_ids), 1)), 0)"


def usage_messages(wallets: list[tuple[UUID, UUID]], vms: int, events: int
                   ) -> list[tuple[UUID, bytes]]:
    """`events` hours of usage spread over `vms` VMs, hour by hour as metering emits them."""
    fleet = [(uuid4(), *wallets[n % len(wallets)]) for n in range(vms)]
    messages = []
    for n in range(events):
        vm, org, wallet = fleet[n % vms]
        hour = START + timedelta(hours=n // vms)
        message = HourlyUsage(usage_id=usage_id(vm, hour, 0), vm_id=vm, wallet_id=wallet,
                              organisation_id=org, hour_start=hour, revision=0, seconds=3600,
                              segments=[UsageSegment(spec=MEDIUM, seconds=3600)],
                              occurred_at=hour + timedelta(hours=1))
        messages.append((wallet, message.model_dump_json().encode()))
    return messages


async def pipeline_run(settings: Settings, messages: list[tuple[UUID, bytes]],
                       profile: bool = False) -> float:
    """The usage is on the topic before billing starts, as for the raw loop: the clock runs
    from billing's first committed line to the wallet's last committed debit, so process and
    consumer-group start-up are not counted (as in `bench.wallet`)."""
    await produce(settings, settings.topic(METERING_USAGE.name), messages)
    services = ServiceProcesses(settings, ("wallet", "billing"),
                                profile=("wallet", "billing") if profile else ())
    conn = await asyncpg.connect(settings.database_url)
    progress = ConsumerProgress(settings)
    await progress.start()
    try:
        services.start()
        while not await conn.fetchval("SELECT EXISTS (SELECT FROM billing.lines)"):
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        cpu_before = services.cpu_seconds()
        # Done when billing has committed its offsets past all the usage (it does so only
        # once its charges are on Kafka) and the wallet past all the charges (only after
        # its transaction committed). Counting ledger rows instead, every 100 ms, took a
        # quarter of the database's time.
        while not (await progress.done(f"billing.{METERING_USAGE.name}", METERING_USAGE)
                   and await progress.done(f"wallet.{BILLING_DEBITS.name}", BILLING_DEBITS)):
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        debited, entries, wallet_hours = await conn.fetchrow(
            f"""SELECT {LINES_BOOKED}, count(*), count(DISTINCT (wallet_id, occurred_at))
                FROM wallet.wallet_transactions WHERE kind = 'usage_debit'""")
        assert debited == len(messages), f"{debited} lines booked, {len(messages)} expected"
        cpu = {name: used - cpu_before.get(name, 0.0)
               for name, used in services.cpu_seconds().items()}
        print(f"  {len(messages)} usage events already on the topic; all {debited} booked "
              f"{elapsed:.2f} s after billing's first line")
        print(f"  as {entries} wallet entries ({debited / entries:.1f} lines each) for "
              f"{wallet_hours} wallet-hours: an hour's usage of a wallet split across billing "
              f"batches is one entry per batch")
        print("  CPU seconds used meanwhile: " + ", ".join(
            f"{name} {used:.1f} s ({used / len(messages) * 1e6:.0f} us/event)"
            for name, used in cpu.items()))
        billed, debited_total = await conn.fetchrow(
            """SELECT (SELECT sum(amount) FROM billing.lines),
                      (SELECT -sum(amount) FROM wallet.wallet_transactions
                       WHERE kind = 'usage_debit')""")
        consistent = await conn.fetchval(
            """SELECT bool_and(w.balance = l.total) FROM wallet.organisation_wallets w
               JOIN (SELECT wallet_id, sum(amount) AS total FROM wallet.wallet_transactions
                     GROUP BY wallet_id) l USING (wallet_id)""")
        print(f"  billed {billed} = debited {debited_total}: {billed == debited_total}; "
              f"wallet ledgers consistent: {consistent}")
        for name, path in services.profiles().items():
            print_profile(name, path)
        return len(messages) / elapsed
    finally:
        await progress.stop()
        await conn.close()
        services.stop()


def print_profile(name: str, path: Path, top: int = 15) -> None:
    """The functions `name` spent most time in (their own time, callees excluded). Under
    cProfile a service runs slower, and coroutines count a call per resumption: read the
    shares, not the times."""
    if not path.exists():
        print(f"  no profile from {name}")
        return
    print(f"  profile of {name} ({path}; python -m pstats {path}):")
    stats = pstats.Stats(str(path), stream=sys.stdout)
    stats.sort_stats(pstats.SortKey.TIME).print_stats(top)


class ConsumerProgress:
    """Whether a consumer group has committed offsets up to the end of a topic."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        servers = settings.kafka_bootstrap_servers
        self.admin = AIOKafkaAdminClient(bootstrap_servers=servers)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=servers)

    async def start(self) -> None:
        await self.admin.start()
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def done(self, group: str, topic: Topic) -> bool:
        name = self.settings.topic(topic.name)
        ends = await self.consumer.end_offsets(
            [TopicPartition(name, p) for p in range(topic.partitions)])
        committed = await self.admin.list_consumer_group_offsets(self.settings.group(group))
        return all(end == 0 or (tp in committed and committed[tp].offset >= end)
                   for tp, end in ends.items())


async def raw_run(settings: Settings, count: int) -> float:
    """Consume the same topic from the start and produce each record on, nothing else."""
    sink = settings.topic("bench.raw-sink")
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(sink, METERING_USAGE.partitions, 1)])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        settings.topic(METERING_USAGE.name), bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.group("bench.raw"), auto_offset_reset="earliest",
        enable_auto_commit=False, max_partition_fetch_bytes=4 * 1024 * 1024)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, linger_ms=5,
                                max_batch_size=512 * 1024, acks="all", enable_idempotence=True)
    await consumer.start()
    await producer.start()
    stack = ServiceProcesses(settings, ())  # no services: the loop and the stack's servers
    try:
        seen = 0
        started = time.perf_counter()
        cpu_before = stack.cpu_seconds()
        while seen < count:
            batch = await consumer.getmany(timeout_ms=200, max_records=5_000)
            sends = [await producer.send(sink, r.value, key=r.key)
                     for records in batch.values() for r in records]
            await asyncio.gather(*sends)
            if sends:
                await consumer.commit()
            seen += len(sends)
        elapsed = time.perf_counter() - started
        print("  CPU seconds used by the raw loop: " + ", ".join(
            f"{'loop' if name == 'bench' else name} {used - cpu_before.get(name, 0.0):.1f} s "
            f"({(used - cpu_before.get(name, 0.0)) / count * 1e6:.0f} us/event)"
            for name, used in stack.cpu_seconds().items() if name != "postgres"))
        return count / elapsed
    finally:
        await producer.stop()
        await consumer.stop()


SLICE_S = 0.02  # the latency run publishes every 20 ms: as steady as a rate gets
POLL_S = 0.01  # and looks for new wallet entries every 10 ms


async def latency_run(settings: Settings, rate: int, seconds: float, warmup: float,
                      vms_per_wallet: int = 10) -> tuple[float, float, int, int]:
    """Usage published at a steady `rate` per second, an event-time hour of `rate` VMs each
    second, a wallet's VMs one after another (as metering closes an hour for a partition's
    VMs at once); latency is from just before each event's publication on metering.usage to
    the moment the bench sees the wallet entry holding its line committed (the ledger polled
    every 10 ms: a bound up to 10 ms high). Events of the first `warmup` seconds are not
    counted. Returns (p50 ms, p99 ms, events counted, entries)."""
    wallets = await open_wallets(settings.database_url, max(1, rate // vms_per_wallet), 10**12)
    fleet = [(uuid4(), org, wallet) for org, wallet in wallets for _ in range(vms_per_wallet)]
    per_slice = max(1, round(rate * SLICE_S))
    slices = round((seconds + warmup) / SLICE_S)
    events: list[tuple[UUID, UUID, bytes]] = []  # (wallet, line id, message)
    for n in range(slices * per_slice):
        vm, org, wallet = fleet[n % len(fleet)]
        hour = START + timedelta(hours=n // len(fleet))
        message = HourlyUsage(usage_id=usage_id(vm, hour, 0), vm_id=vm, wallet_id=wallet,
                              organisation_id=org, hour_start=hour, revision=0, seconds=3600,
                              segments=[UsageSegment(spec=MEDIUM, seconds=3600)],
                              occurred_at=hour + timedelta(hours=1))
        events.append((wallet, line_id(vm, hour, 0), message.model_dump_json().encode()))
    services = ServiceProcesses(settings, ("wallet", "billing"))
    conn = await asyncpg.connect(settings.database_url)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all",
                                enable_idempotence=True)
    published: dict[UUID, float] = {}
    latency: dict[UUID, float] = {}
    entries = 0
    topic = settings.topic(METERING_USAGE.name)
    try:
        services.start()
        await producer.start()

        async def publish() -> None:
            sends = []
            started = time.perf_counter()
            for k in range(slices):
                await asyncio.sleep(max(0.0, started + k * SLICE_S - time.perf_counter()))
                for wallet, line, value in events[k * per_slice:(k + 1) * per_slice]:
                    published[line] = time.perf_counter()
                    sends.append(await producer.send(topic, value, key=str(wallet).encode()))
            await asyncio.gather(*sends)

        sender = asyncio.create_task(publish())
        last = 0
        shown = 0.0
        started = time.perf_counter()
        deadline = started + seconds + warmup + 60
        while len(latency) < len(events) and time.perf_counter() < deadline:
            await asyncio.sleep(POLL_S)
            rows = await conn.fetch(
                """SELECT entry_id, line_ids FROM wallet.wallet_transactions
                   WHERE entry_id > $1 AND kind = 'usage_debit'""", last)
            seen = time.perf_counter()
            for row in rows:
                last = max(last, row["entry_id"])
                entries += 1
                for line in row["line_ids"]:
                    latency[line] = seen - published[line]
            elapsed = seen - started
            if elapsed >= shown + 1 or len(latency) == len(events):
                shown = elapsed
                print(f"\r  latency run: {len(published):,}/{len(events):,} published, "
                      f"{len(latency):,} booked ({len(latency) / len(events):.0%}), "
                      f"{len(latency) / elapsed:,.0f}/s, "
                      f"ETA {max(0.0, seconds + warmup - elapsed):.0f} s ", end="",
                      file=sys.stderr)
        print(file=sys.stderr)
        await sender
        assert len(latency) == len(events), f"{len(events) - len(latency)} events not booked"
    finally:
        await producer.stop()
        await conn.close()
        services.stop()
    counted = [latency[line] * 1000 for _, line, _ in events[round(warmup / SLICE_S)
                                                              * per_slice:]]
    return percentile(counted, 50), percentile(counted, 99), len(counted), entries


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, int(-(-len(ordered) * p // 100)))
    return ordered[rank - 1]


async def main(args: argparse.Namespace) -> None:
    configure_logging("WARNING", json=False)
    async with bench_settings() as settings:
        wallets = await open_wallets(settings.database_url, args.wallets, 10**12)
        messages = usage_messages(wallets, args.vms, args.events)
        pipeline = await pipeline_run(settings, messages, profile=args.profile)
        print(f"pipeline: {args.events} usage events over {args.vms} VMs and {args.wallets} "
              f"wallets: {pipeline:,.0f}/s")
        raw = await raw_run(settings, len(messages))
        print(f"raw aiokafka consume-and-produce of the same messages: {raw:,.0f}/s")
    async with bench_settings() as settings:
        p50, p99, counted, entries = await latency_run(settings, args.latency_rate,
                                                       args.latency_seconds, warmup=2.0)
        print(f"latency at a steady {args.latency_rate:,} usage events/s, publication on "
              f"metering.usage to wallet entry committed: p50 {p50:.0f} ms, p99 {p99:.0f} ms "
              f"({counted:,} events after a 2 s warm-up; {entries:,} wallet entries in all)")
    print(f"pipeline_events_per_s={pipeline:.0f} raw_kafka_events_per_s={raw:.0f} "
          f"ratio={pipeline / raw:.3f} p50_ms={p50:.0f} p99_ms={p99:.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--wallets", type=int, default=500)
    parser.add_argument("--vms", type=int, default=5_000)
    parser.add_argument("--latency-rate", type=int, default=2_000,
                        help="usage events per second of the latency run")
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--profile", action="store_true",
                        help="run billing and the wallet under cProfile in the backlog run and "
                             "print where each spent its time (slower: not for the figures)")
    uvloop.run(main(parser.parse_args()))
