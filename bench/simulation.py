"""The simulation at full size: every company in the file for six months, through the real
services, proved by the oracle. Prints the wall time, the usage events and the end-to-end
events per second next to the raw limits measured in the same run: a bare aiokafka consume
and produce of as many usage messages (the simulation's own, from `metering.usage`), and
`bench floor`'s figure (the least work per usage event on this machine's cores).

Whether the cost stays flat as the system ages (`bench/flat_cost.py`): per simulated month
the usage events per second and each service's CPU seconds per 1,000 usage events, the last
month over the first (target: within 15%), each table's size at the end and each process's
peak memory; a plot in .data/bench-simulation/cost-by-month.png.

Usage: python -m bench.simulation [--companies N] [--days N] [--seed N] [--no-floor]
Last line: companies=<n> months=<n> usage_events=<n> wall_s=<n> events_per_s=<n>
           oracle=<exact|differs>
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer

from bench.flat_cost import (
    CostMeter,
    input_totals,
    scan_report,
    scans,
    size_report,
    table_sizes,
)
from bench.infra import REPO_ROOT, bench_settings
from bench.pipeline import raw_run
from bench.statement_growth import StatementMonths
from deploy.launcher import start_system
from deploy.processes import free_port
from deploy.simulation import (
    DEFAULT_START,
    SIZES,
    print_outcome,
    run_simulation,
    simulation_settings,
)
from shared.logs import configure_logging


def floor_figure(events: int) -> str:
    """`bench floor`'s last line, run in its own process on its own topics and database."""
    done = subprocess.run([sys.executable, "-m", "bench.floor", "--events", str(events)],
                          cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    return lines[-1] if done.returncode == 0 and lines else f"floor failed: {done.stderr[-300:]}"


async def main(args: argparse.Namespace) -> None:
    configure_logging("WARNING", json=False)
    async with bench_settings(wallet_http_port=free_port(), provisioning_http_port=free_port(),
                              metering_http_port=free_port(), billing_http_port=free_port(),
                              vcenter_simulator_http_port=free_port()) as plain:
        settings = simulation_settings(plain, DEFAULT_START, args.days)
        folder = Path(tempfile.mkdtemp(prefix="cloudwallet-bench-simulation-"))
        system = await asyncio.to_thread(start_system, settings, folder, use_existing=True)
        cost = CostMeter(system.processes, time.monotonic())
        offsets = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
        await offsets.start()
        counting: list[asyncio.Task[None]] = []

        statements = StatementMonths()
        stats = await asyncpg.connect(settings.database_url)
        await statements.enable(stats)

        async def count_inputs(at: datetime, after: asyncio.Task[None] | None) -> None:
            if after is not None:
                await after  # in day order
            cost.inputs_seen(at, await input_totals(settings, list(system.processes), offsets))
            await statements.sample(stats, at)

        requests_sent: Counter[str] = Counter()

        def day_done(at: datetime) -> None:
            cost.day_done(at, time.monotonic())
            cost.requests_seen(at, requests_sent)
            counting.append(asyncio.create_task(
                count_inputs(at, counting[-1] if counting else None)))

        try:
            outcome = await run_simulation(
                settings, {name: system.url(name) for name in system.processes},
                seed=args.seed, start=DEFAULT_START, days=args.days, companies=args.companies,
                report_dir=REPO_ROOT / ".data" / "bench-simulation" / "report",
                after_day=day_done, requests_sent=requests_sent)
            cost.record_memory()
            await asyncio.gather(*counting)
        finally:
            await offsets.stop()
            await stats.close()
            await asyncio.to_thread(system.stop)
        print_outcome(outcome, shown=10)
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute("ANALYZE")
            await cost.count_usage(conn)
            sizes = await table_sizes(conn)
            scanned = await scans(conn)
        finally:
            await conn.close()
        print("\n".join(cost.report() + size_report(sizes) + scan_report(scanned)
                        + statements.report(cost.full_months())))
        plot = REPO_ROOT / ".data" / "bench-simulation" / "cost-by-month.png"
        cost.plot(plot)
        print(f"plot: {plot}")
        print("raw limits, measured now:")
        raw = await raw_run(settings, outcome.usage_events)
        print(f"  bare aiokafka consume and produce of {outcome.usage_events:,} usage messages: "
              f"{raw:,.0f}/s")
    floor = floor_figure(args.floor_events) if args.floor_events else "skipped"
    print(f"  bench floor: {floor}")
    rate = outcome.usage_events / outcome.wall_s
    print(f"  end to end: {rate:,.0f}/s, {rate / raw:.3f} of the bare Kafka loop")
    print(f"companies={len(outcome.scenario.companies)} months={len(outcome.scenario.months())} "
          f"usage_events={outcome.usage_events} wall_s={outcome.wall_s:.0f} "
          f"events_per_s={rate:.0f} oracle={'exact' if outcome.exact else 'differs'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--companies", type=int, default=SIZES["full"].companies)
    parser.add_argument("--days", type=int, default=SIZES["full"].days)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--floor-events", type=int, default=100_000,
                        help="usage events for bench floor (0: skip it)")
    asyncio.run(main(parser.parse_args()))
