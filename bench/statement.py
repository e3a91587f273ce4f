"""A month's wallet statement, made by running billing and the wallet on a month of usage:
the example in docs/statements.md. Not a benchmark; it runs on the benchmarks' servers.

One wallet with `--vms` VMs of mixed sizes running every hour of January 2026, one hour
corrected (a VM that ran only half of it), then the wallet's statement for the month as CSV
(and as JSON with `detail=vm`, where the wallet has it). Prints how many rows it has, its
first rows, the correction and its last rows.

Usage: python -m bench.statement [--vms N]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import asyncpg
import httpx
import uvloop

from bench.infra import ServiceProcesses, bench_settings
from bench.wallet import produce
from shared.contracts.metering import HourlyUsage, UsageSegment, usage_id
from shared.contracts.vm import VmSpec
from shared.logs import configure_logging
from shared.topics import METERING_USAGE

JANUARY = datetime(2026, 1, 1, tzinfo=UTC)
HOURS = 31 * 24
SIZES = [VmSpec.of_tier("small"), VmSpec.of_tier("medium"), VmSpec.of_tier("medium"),
         VmSpec.of_tier("large")]


async def main(args: argparse.Namespace) -> None:
    configure_logging("WARNING", json=False)
    async with bench_settings() as settings:
        conn = await asyncpg.connect(settings.database_url)
        org, wallet = uuid4(), uuid4()
        await conn.execute("INSERT INTO wallet.organisations (organisation_id, name, kind) "
                           "VALUES ($1, 'Example Bank', 'customer')", org)
        await conn.execute("""INSERT INTO wallet.organisation_wallets (wallet_id, organisation_id,
                                  currency, billing_mode, balance) VALUES ($1, $2, 'ZAR', 'PAYG',
                                  1000000)""", wallet, org)
        await conn.execute("""INSERT INTO wallet.wallet_transactions (wallet_id, kind, amount,
                                  balance_after, idempotency_key, description, occurred_at)
                              VALUES ($1, 'top_up', 1000000, 1000000, 'payment:example',
                                      'top-up example', $2)""",
                           wallet, JANUARY - timedelta(days=1))
        vms = [(uuid4(), SIZES[n % len(SIZES)]) for n in range(args.vms)]
        messages = []
        for hour in range(HOURS):
            start = JANUARY + timedelta(hours=hour)
            for vm, spec in vms:
                messages.append((wallet, HourlyUsage(
                    usage_id=usage_id(vm, start, 0), vm_id=vm, wallet_id=wallet,
                    organisation_id=org, hour_start=start, revision=0, seconds=3600,
                    segments=[UsageSegment(spec=spec, seconds=3600)],
                    occurred_at=start + timedelta(hours=1)).model_dump_json().encode()))
        corrected_vm, spec = vms[0]
        corrected_hour = JANUARY + timedelta(days=9, hours=14)
        messages.append((wallet, HourlyUsage(
            usage_id=usage_id(corrected_vm, corrected_hour, 1), vm_id=corrected_vm,
            wallet_id=wallet, organisation_id=org, hour_start=corrected_hour, revision=1,
            seconds=1800, segments=[UsageSegment(spec=spec, seconds=1800)],
            occurred_at=corrected_hour + timedelta(hours=2)).model_dump_json().encode()))
        services = ServiceProcesses(settings, ("wallet", "billing"))
        try:
            services.start()
            await produce(settings, settings.topic(METERING_USAGE.name), messages)
            expected = len(messages)
            started = time.perf_counter()
            while (booked := await conn.fetchval(
                    """SELECT count(*) FROM billing.lines l WHERE EXISTS (
                         SELECT 1 FROM wallet.wallet_transactions t
                         WHERE t.wallet_id = l.wallet_id AND t.occurred_at = l.hour_start
                           AND t.kind LIKE 'usage_%')""")) < expected:
                elapsed = time.perf_counter() - started
                print(f"\r  {booked:,}/{expected:,} usage lines booked "
                      f"({booked / max(elapsed, 1e-9):,.0f}/s)", end="", file=sys.stderr)
                await asyncio.sleep(0.5)
            print(file=sys.stderr)
            while not await conn.fetchval(  # the correction's line shares a booked hour
                    "SELECT EXISTS (SELECT 1 FROM wallet.wallet_transactions "
                    "WHERE kind = 'usage_credit')"):
                await asyncio.sleep(0.1)
            params = {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"}
            async with httpx.AsyncClient(base_url=services.url("wallet"), timeout=60) as http:
                text = (await http.get(f"/wallets/{wallet}/statement",
                                       params={**params, "format": "csv"})).text
                detailed = await http.get(f"/wallets/{wallet}/statement",
                                          params={**params, "detail": "vm"})
        finally:
            services.stop()
            await conn.close()
    rows = list(csv.reader(io.StringIO(text)))
    print(f"January 2026, {args.vms} VMs, {expected:,} usage events: the statement CSV has "
          f"{len(rows) - 1:,} rows after its header")
    corrections = [n for n, r in enumerate(rows) if "correction" in ",".join(r)]
    shown = sorted({*range(min(6, len(rows))), *corrections,
                    *range(max(0, len(rows) - 2), len(rows))})
    last = -1
    for n in shown:
        if n != last + 1:
            print("...")
        print(",".join(rows[n]))
        last = n
    if detailed.status_code == 200 and "vms" in detailed.text:
        entries = detailed.json()["entries"]
        usage = next(e for e in entries if e["kind"] == "usage_debit")
        usage["vms"] = [*usage["vms"][:3], f"... {len(usage['vms']) - 3} more"]
        print("detail=vm, the first usage entry:")
        print(json.dumps(usage, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=20)
    uvloop.run(main(parser.parse_args()))
