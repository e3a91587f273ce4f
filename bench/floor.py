"""The fastest the billing pipeline could go on this machine: what the least work of the
design (one wallet entry per wallet and hour, issue #13) costs each usage event in CPU, with
no rating, no state and no confirmation.

  the usage consumed and produced on  the raw aiokafka loop of `bench.pipeline`
                                      (the loop's process and the broker)
  parsed with its contract            `HourlyUsage` through billing's own TypeAdapter
  its line, and its share of a        COPY into `billing.lines` per usage, and per wallet
  wallet entry, stored                and hour of each batch of 2,000 one row into
                                      `billing.usage_entries` and one into
                                      `wallet.wallet_transactions` with its VM parts (their
                                      real indexes and keys), one durable transaction per
                                      batch, the batch's wallets locked first

The pipeline does all of this but the raw loop's produce per event (it produces one record
per wallet and batch), and much more: rating, each hour's and VM month's state, the wallet's
own consume and parse, confirmations. The floor's rate, the cores' CPU seconds divided by
the CPU this floor takes per event, is what that least work allows; the pipeline is then run
on the same number of events (fresh database and topics) and its share of that rate
printed.

PostgreSQL's CPU is read only from a stack this run starts; against DATABASE_URL the
database's share is the wall time of its statements (they run one at a time).

Usage: python -m bench.floor [--events N] [--no-pipeline]
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import datetime
from uuid import UUID

import asyncpg
import uvloop
from pydantic import TypeAdapter

from bench.infra import ServiceProcesses, bench_settings
from bench.pipeline import pipeline_run, raw_run, usage_messages
from bench.wallet import open_wallets, produce
from services.billing.domain import line_id, month_of, usage_entry_id
from services.billing.handlers import USAGE
from services.billing.repository import ENTRY_COLUMNS as BILLING_ENTRY_COLUMNS
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


def rows_of(usages: list[HourlyUsage]) -> tuple[list[tuple[object, ...]],
                                                list[tuple[object, ...]],
                                                list[tuple[object, ...]]]:
    """The lines, usage entries and ledger rows billing and the wallet write for a batch
    (amounts made up): a line per usage, an entry and a ledger row per wallet and hour."""
    lines: list[tuple[object, ...]] = []
    entries: list[tuple[object, ...]] = []
    ledger: list[tuple[object, ...]] = []
    by_hour: dict[tuple[UUID, datetime], list[tuple[HourlyUsage, UUID]]] = {}
    for n, usage in enumerate(usages):
        key = line_id(usage.vm_id, usage.hour_start, usage.revision)
        by_hour.setdefault((usage.wallet_id, usage.hour_start), []).append((usage, key))
        entry = usage_entry_id(by_hour[(usage.wallet_id, usage.hour_start)][0][1])
        lines.append((key, usage.usage_id, n % METERING_USAGE.partitions, usage.wallet_id,
                      usage.organisation_id, usage.vm_id, usage.hour_start,
                      month_of(usage.hour_start), month_of(usage.hour_start), usage.revision,
                      usage.seconds, 41, 30_000, 41, False, "ZAR", "bench", "VM-MEDIUM", entry))
    for (wallet, hour), parts in by_hour.items():
        entry = usage_entry_id(parts[0][1])
        vm_ids, line_ids = [u.vm_id for u, _ in parts], [k for _, k in parts]
        amounts = [41] * len(parts)
        entries.append((entry, wallet, hour, 0, "debit", sum(amounts), "ZAR", vm_ids, line_ids,
                        amounts))
        ledger.append((wallet, "usage_debit", -sum(amounts), 0, 0, f"usage:{entry}", None, None,
                       "Usage", hour, vm_ids, line_ids, amounts))
    return lines, entries, ledger


async def store_cost(url: str, usages: list[HourlyUsage], stack: ServiceProcesses
                     ) -> tuple[float, float, int]:
    """(client CPU seconds, database seconds, entries) to store every usage's line, and the
    usage entries and ledger rows of each batch's wallet-hours."""
    batches = [rows_of(usages[start:start + BATCH]) for start in range(0, len(usages), BATCH)]
    conn = await asyncpg.connect(url)
    try:
        before = stack.cpu_seconds()
        client = time.process_time()
        wall = time.perf_counter()
        for lines, entries, ledger in batches:
            async with conn.transaction():
                await conn.execute(
                    """SELECT 1 FROM wallet.organisation_wallets
                       WHERE wallet_id = ANY($1::uuid[]) ORDER BY wallet_id FOR UPDATE""",
                    list({e[0] for e in ledger}))
                await conn.copy_records_to_table(
                    "lines", schema_name="billing", columns=LINE_COLUMNS, records=lines)
                await conn.copy_records_to_table(
                    "usage_entries", schema_name="billing", columns=BILLING_ENTRY_COLUMNS,
                    records=entries)
                await conn.copy_records_to_table(
                    "wallet_transactions", schema_name="wallet", columns=ENTRY_COLUMNS,
                    records=ledger)
        wall = time.perf_counter() - wall
        client = time.process_time() - client
        after = stack.cpu_seconds()
    finally:
        await conn.close()
    entries_count = sum(len(e) for _, e, _ in batches)
    if "postgres" in after:
        return client, after["postgres"] - before.get("postgres", 0.0), entries_count
    return client, wall - client, entries_count


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
        client, database, entries = await store_cost(settings.database_url, usages, stack)
        per_event["store (client)"] = client
        per_event["store (database)"] = database
    pipeline = None
    if not args.no_pipeline:
        async with bench_settings() as settings:
            wallets = await open_wallets(settings.database_url, 500, 10**12)
            pipeline = await pipeline_run(settings, usage_messages(wallets, 5_000, args.events))

    total = sum(per_event.values()) / len(messages) * 1e6
    floor = cores * 1e6 / total
    print(f"floor for {len(messages)} usage events on {cores} cores "
          f"(the raw loop alone: {raw:,.0f}/s; {len(messages) / entries:.1f} lines per "
          f"wallet entry, batches of {BATCH}):")
    for name, seconds in per_event.items():
        print(f"  {name}: {seconds / len(messages) * 1e6:.0f} us/event")
    share = ""
    if pipeline is not None:
        print(f"the pipeline in the same run: {pipeline:,.0f}/s, {pipeline / floor:.0%} of the "
              f"floor's rate")
        share = f" pipeline_events_per_s={pipeline:.0f} pipeline_share={pipeline / floor:.3f}"
    print(f"floor_us_per_event={total:.0f} cores={cores} "
          f"floor_events_per_s={floor:.0f}{share}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--no-pipeline", action="store_true",
                        help="skip running the pipeline (bench.pipeline) for its share")
    uvloop.run(main(parser.parse_args()))
