"""The fastest the billing pipeline could go on this machine: what the least work issue #6
asks of each usage event costs in CPU, with no rating, no state and no confirmation.

  the usage consumed and produced on  the raw aiokafka loop of `bench.pipeline`
                                      (the loop's process and the broker)
  parsed with its contract            `HourlyUsage` through billing's own TypeAdapter
  its line and its ledger row stored  COPY into `billing.lines` and
                                      `wallet.wallet_transactions` (their real indexes
                                      and keys), 2,000 rows of each per durable
                                      transaction, the batch's wallets locked first

The pipeline does all of this but the raw loop's produce per event (it produces one record
per wallet and batch), and much more: rating, each hour's and VM month's state, the wallet's
own consume, parse and booking, confirmations. The rate printed last, the cores' CPU
seconds divided by the CPU this floor takes per event, is what that least work allows.

PostgreSQL's CPU is read only from a stack this run starts; against DATABASE_URL the
database's share is the wall time of its statements (they run one at a time).

Usage: python -m bench.floor [--events N]
"""

from __future__ import annotations

import argparse
import os
import time

import asyncpg
import uvloop
from pydantic import TypeAdapter

from bench.infra import ServiceProcesses, bench_settings
from bench.pipeline import raw_run, usage_messages
from bench.wallet import open_wallets, produce
from services.billing.domain import line_id, month_of
from services.billing.handlers import USAGE
from services.billing.repository import LINE_COLUMNS
from services.wallet.repository import ENTRY_COLUMNS
from shared.contracts.metering import HourlyUsage
from shared.logs import configure_logging
from shared.topics import METERING_USAGE

BATCH = 2_000


def parse_cost(messages: list[bytes]) -> float:
    """CPU seconds to parse every message as billing does."""
    started = time.process_time()
    for value in messages:
        USAGE.validate_json(value)
    return time.process_time() - started


def rows_of(usage: HourlyUsage, partition: int) -> tuple[tuple[object, ...], tuple[object, ...]]:
    """A line and a ledger row as billing and the wallet write them (amounts made up)."""
    key = line_id(usage.vm_id, usage.hour_start, usage.revision)
    line = (key, usage.usage_id, partition, usage.wallet_id, usage.organisation_id,
            usage.vm_id, usage.hour_start, month_of(usage.hour_start),
            month_of(usage.hour_start), usage.revision, usage.seconds, 41, 30_000, 41, False,
            "ZAR", "bench", "VM-MEDIUM")
    entry = (usage.wallet_id, "usage_debit", -41, 0, 0, f"debit:{key}", usage.vm_id, None,
             "usage", usage.hour_start)
    return line, entry


async def store_cost(url: str, usages: list[HourlyUsage], stack: ServiceProcesses
                     ) -> tuple[float, float]:
    """(client CPU seconds, database seconds) to store every usage's line and ledger row."""
    rows = [rows_of(u, n % METERING_USAGE.partitions) for n, u in enumerate(usages)]
    conn = await asyncpg.connect(url)
    try:
        before = stack.cpu_seconds()
        client = time.process_time()
        wall = time.perf_counter()
        for start in range(0, len(rows), BATCH):
            batch = rows[start:start + BATCH]
            async with conn.transaction():
                await conn.execute(
                    """SELECT 1 FROM wallet.organisation_wallets
                       WHERE wallet_id = ANY($1::uuid[]) ORDER BY wallet_id FOR UPDATE""",
                    list({e[0] for _, e in batch}))
                await conn.copy_records_to_table(
                    "lines", schema_name="billing", columns=LINE_COLUMNS,
                    records=[line for line, _ in batch])
                await conn.copy_records_to_table(
                    "wallet_transactions", schema_name="wallet", columns=ENTRY_COLUMNS,
                    records=[entry for _, entry in batch])
        wall = time.perf_counter() - wall
        client = time.process_time() - client
        after = stack.cpu_seconds()
    finally:
        await conn.close()
    if "postgres" in after:
        return client, after["postgres"] - before.get("postgres", 0.0)
    return client, wall - client


async def main(args: argparse.Namespace) -> None:
    configure_logging("WARNING", json=False)
    cores = len(os.sched_getaffinity(0))
    async with bench_settings() as settings:
        wallets = await open_wallets(settings.database_url, 500, 10**12)
        messages = usage_messages(wallets, 5_000, args.events)
        values = [value for _, value in messages]
        per_event = {}

        await produce(settings, settings.topic(METERING_USAGE.name), messages)
        stack = ServiceProcesses(settings, ())
        before = stack.cpu_seconds()
        raw = await raw_run(settings, len(messages))
        after = stack.cpu_seconds()
        per_event["kafka loop"] = (after["bench"] - before["bench"]
                                   + after.get("kafka", 0.0) - before.get("kafka", 0.0))

        per_event["parse"] = parse_cost(values)
        adapter: TypeAdapter[HourlyUsage] = TypeAdapter(HourlyUsage)
        usages = [adapter.validate_json(v) for v in values]
        client, database = await store_cost(settings.database_url, usages, stack)
        per_event["store (client)"] = client
        per_event["store (database)"] = database

    total = sum(per_event.values()) / len(messages) * 1e6
    print(f"floor for {len(messages)} usage events on {cores} cores "
          f"(the raw loop alone: {raw:,.0f}/s):")
    for name, seconds in per_event.items():
        print(f"  {name}: {seconds / len(messages) * 1e6:.0f} us/event")
    print(f"floor_us_per_event={total:.0f} cores={cores} "
          f"floor_events_per_s={cores * 1e6 / total:.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    uvloop.run(main(parser.parse_args()))
