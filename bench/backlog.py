"""A day of usage arriving at once (issue #17, overload): drained with nothing lost.

Before any service runs, `--vms` VMs are created and powered on in vCenter's stream and a
day (`--hours`) of hourly clock ticks follows them: the backlog a metering outage of a day
leaves. Then metering, billing and the wallet start as their own processes
(`cloudwallet serve`) and work it off: hours closed, usage rated into lines, lines booked
as wallet entries. Printed: the time to drain (from the services' launch to the wallet
holding every line; start-up included, as each consumes while the others still start),
each service's peak resident memory (the kernel's VmHWM), and the checks that nothing was
lost or booked twice:

  metering hours == billing lines == VMs x hours; every line with an amount in exactly one
  wallet entry; the wallets' usage total == the lines' total; balance == sum(ledger).

Last line: backlog_events=<n> drain_s=<s> peak_mb=<service:MB,...> lost=<n> duplicated=<n>

Usage: python -m bench.backlog [--vms N] [--hours H] [--wallets N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
from aiokafka import AIOKafkaProducer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench.infra import ServiceProcesses, bench_settings
from bench.metering import SIZES
from bench.wallet import open_wallets
from shared.clock import publish_tick
from shared.contracts.vcenter import VmCreated, VmPoweredOn
from shared.logs import configure_logging
from shared.settings import Settings
from shared.topics import VCENTER_EVENTS

DAY_START = datetime(2026, 3, 2, tzinfo=UTC)
SERVICES = ("metering", "billing", "wallet")

PROGRESS_SQL = """
SELECT (SELECT count(*) FROM metering.usage_hours) AS hours,
       (SELECT count(*) FROM billing.lines) AS lines,
       (SELECT count(*) FROM billing.lines WHERE amount > 0) AS charged,
       (SELECT coalesce(sum(cardinality(line_ids)), 0) FROM wallet.wallet_transactions
         WHERE kind = 'usage_debit') AS booked
"""


async def publish_backlog(settings: Settings, wallets: list[tuple[UUID, UUID]], vms: int,
                          hours: int) -> int:
    """The VMs and a day of ticks on vcenter.events: how many records."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    try:
        topic = settings.topic(VCENTER_EVENTS.name)
        sends = []
        for n in range(vms):
            organisation_id, wallet_id = wallets[n % len(wallets)]
            vm_id = uuid4()
            for message in (VmCreated(vm_id=vm_id, organisation_id=organisation_id,
                                      wallet_id=wallet_id, spec=SIZES[n % len(SIZES)],
                                      occurred_at=DAY_START),
                            VmPoweredOn(vm_id=vm_id, occurred_at=DAY_START)):
                sends.append(await producer.send(topic, message.model_dump_json().encode(),
                                                 key=str(vm_id).encode()))
        await asyncio.gather(*sends)
        for h in range(1, hours + 1):
            await publish_tick(producer, settings, DAY_START + timedelta(hours=h))
        return 2 * vms + hours * (VCENTER_EVENTS.partitions + 1)
    finally:
        await producer.stop()


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def drain(settings: Settings, services: ServiceProcesses, expected: int,
                timeout: float, started: float) -> float:
    """Seconds from `started` until every VM-hour is a line and every charged line is in a
    wallet entry."""
    conn = await asyncpg.connect(settings.database_url)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}"
               "/{task.total:,} lines booked"), TextColumn("{task.fields[rate]:,.0f}/s"),
               TimeElapsedColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns) as bar:
            task = bar.add_task("draining", total=expected, rate=0.0)
            while True:
                row = await conn.fetchrow(PROGRESS_SQL)
                elapsed = time.perf_counter() - started
                bar.update(task, completed=row["booked"], rate=row["booked"] / max(elapsed, 1e-3))
                if row["hours"] >= expected and row["lines"] >= expected \
                        and row["booked"] >= row["charged"]:
                    return elapsed
                for name, process in services.processes.items():
                    assert process.poll() is None, f"{name} exited ({services.logs})"
                assert elapsed < timeout, f"not drained in {timeout:.0f} s: {dict(row)}"
                await asyncio.sleep(0.25)
    finally:
        await conn.close()


async def checks(settings: Settings, expected: int) -> tuple[int, int]:
    """(lost, duplicated) VM-hours or lines, and the money checks (asserted)."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        hours = await conn.fetchval("SELECT count(*) FROM metering.usage_hours")
        lines = await conn.fetchval("SELECT count(*) FROM billing.lines")
        charged, charged_total = await conn.fetchrow(
            "SELECT count(*), coalesce(sum(amount), 0) FROM billing.lines WHERE amount > 0")
        booked, distinct, booked_total = await conn.fetchrow(
            """SELECT count(*), count(DISTINCT l), coalesce(sum(a), 0) FROM (
                 SELECT unnest(line_ids) AS l, unnest(vm_amounts) AS a
                 FROM wallet.wallet_transactions WHERE kind = 'usage_debit') t""")
        unbalanced = await conn.fetchval(
            """SELECT count(*) FROM wallet.organisation_wallets w WHERE w.balance <>
                 (SELECT coalesce(sum(amount), 0) FROM wallet.wallet_transactions t
                  WHERE t.wallet_id = w.wallet_id)""")
        print(f"metering hours {hours:,}, billing lines {lines:,} ({charged:,} charged, "
              f"R{charged_total / 100:,.2f}), wallet lines {booked:,} "
              f"(R{booked_total / 100:,.2f}), wallets with balance != ledger: {unbalanced}")
        assert booked_total == charged_total, "the wallets' usage differs from the lines'"
        assert unbalanced == 0
        lost = max(0, expected - hours) + max(0, expected - lines) + max(0, charged - distinct)
        duplicated = max(0, hours - expected) + max(0, lines - expected) + (booked - distinct)
        return lost, duplicated
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> None:
    configure_logging("WARNING", json=False)
    async with bench_settings() as settings:
        wallets = await open_wallets(settings.database_url, args.wallets, 10**12)
        records = await publish_backlog(settings, wallets, args.vms, args.hours)
        expected = args.vms * args.hours
        print(f"backlog: {args.vms:,} VMs x {args.hours} hours = {expected:,} VM-hours "
              f"({records:,} records on vcenter.events) before any service runs")
        services = ServiceProcesses(settings, SERVICES)
        launch = time.perf_counter()
        services.start()
        up = time.perf_counter()
        print(f"services up (HTTP answering) in {up - launch:.1f} s")
        try:
            # from the launch: the services consume while the others are still starting
            seconds = await drain(settings, services, expected, args.timeout, launch)
            peaks = {name: peak_rss_mb(p.pid) for name, p in services.processes.items()}
            lost, duplicated = await checks(settings, expected)
        finally:
            services.stop()
        for name, mb in peaks.items():
            print(f"{name}: peak resident memory {mb:,.0f} MB")
        print(f"drained {seconds:.1f} s after the services were launched "
              f"({expected / seconds:,.0f} VM-hours/s, start-up included)")
        print(f"backlog_events={expected} drain_s={seconds:.1f} peak_mb="
              + ",".join(f"{n}:{mb:.0f}" for n, mb in peaks.items())
              + f" lost={lost} duplicated={duplicated}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=2_000)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--wallets", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=600.0)
    asyncio.run(main(parser.parse_args()))
