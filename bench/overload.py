"""Provisioning under overload (issue #17): `--rate` (default 2,000/s, ten times the
provisioning benchmark's 200/s) for `--seconds`, then drain; nothing lost.

Wallet, provisioning and the vCenter simulator run as processes, as in `bench.provisioning`
(whose organisations and load client this reuses). Requests go out open loop at the rate
asked, at most `--in-flight` at a time (a real portal's connection pool is bounded too; the
rate achieved is printed). Every answer is counted by status: 202 accepted, 429/503 refused
(the API's documented answers to overload, with Retry-After), anything else a failure.
After the load, the time until every accepted request is in a final state is the drain.
Printed: the statuses, the achieved rate, the drain time, each service's peak resident
memory (VmHWM), and the checks: every accepted request final, none open, no hold open for a
request that did not succeed, balance == sum(ledger) and held == sum(open holds) for every
wallet.

Last line: asked_per_s= achieved_per_s= accepted= refused= failed= drain_s= peak_mb= lost=

Usage: python -m bench.overload [--rate R] [--seconds S] [--organisations N] [--in-flight N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter

import asyncpg
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench.backlog import peak_rss_mb
from bench.infra import ServiceProcesses, bench_settings
from bench.provisioning import SERVICES, LoadClient, healthy, open_organisations
from shared.api_client import client as api_client
from shared.api_keys import issue_key_at
from shared.auth import Role
from shared.logs import configure_logging

REFUSALS = {429, 503}
CHECKS_SQL = """
SELECT (SELECT count(*) FROM provisioning.requests
         WHERE status IN ('awaiting_funds', 'awaiting_vcenter')) AS open_requests,
       (SELECT count(*) FROM provisioning.requests) AS requests,
       (SELECT count(*) FROM wallet.holds h JOIN provisioning.requests r
          ON r.request_id = h.request_id
         WHERE h.status IN ('pending', 'active') AND r.status <> 'succeeded') AS stray_holds,
       (SELECT count(*) FROM wallet.organisation_wallets w
         WHERE w.balance <> (SELECT coalesce(sum(amount), 0) FROM wallet.wallet_transactions t
                             WHERE t.wallet_id = w.wallet_id)
            OR w.held <> (SELECT coalesce(sum(remaining), 0) FROM wallet.holds h
                          WHERE h.wallet_id = w.wallet_id
                            AND h.status IN ('pending', 'active'))) AS inconsistent
"""


async def load(client: LoadClient, orgs: list[tuple[str, str]], rate: float, seconds: float,
               in_flight: int) -> tuple[Counter[int], list[str], float]:
    """Statuses, accepted request ids and the seconds the sending took."""
    statuses: Counter[int] = Counter()
    accepted: list[str] = []
    slots = asyncio.Semaphore(in_flight)
    count = int(rate * seconds)

    async def one(n: int) -> None:
        organisation, key = orgs[n % len(orgs)]
        body = json.dumps({"organisation_id": organisation, "name": f"vm-{n}",
                           "tier": "small"}).encode()
        try:
            status, answer = await client.post("/vm-requests", body, {
                "Idempotency-Key": f"overload-{n}", "Authorization": f"Bearer {key}"})
        except (OSError, asyncio.IncompleteReadError):
            status, answer = 0, b""  # no answer at all: a failure
        finally:
            slots.release()
        statuses[status] += 1
        if status == 202:
            accepted.append(json.loads(answer)["request_id"])

    columns = (TextColumn("sending"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
               TextColumn("{task.fields[rate]:,.0f}/s"), TimeElapsedColumn(),
               TimeRemainingColumn())
    tasks = []
    begin = time.perf_counter()
    with Progress(*columns) as bar:
        task = bar.add_task("sending", total=count, rate=0.0)
        for n in range(count):
            delay = begin + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()  # a full pool makes the sender late: the rate achieved drops
            tasks.append(asyncio.create_task(one(n)))
            if n % 500 == 0:
                elapsed = time.perf_counter() - begin
                bar.update(task, completed=n, rate=n / max(elapsed, 1e-3))
        await asyncio.gather(*tasks)
        bar.update(task, completed=count)
    return statuses, accepted, time.perf_counter() - begin


async def main(args: argparse.Namespace) -> None:
    configure_logging("WARNING", json=False)
    async with bench_settings() as settings:
        servers = ServiceProcesses(settings, SERVICES)
        servers.start()
        try:
            operator = await issue_key_at(settings.database_url, name="overload operator",
                                          role=Role.OPERATOR)
            async with api_client(operator, timeout=60) as http:
                for name in SERVICES:
                    await healthy(http, servers.url(name))
                orgs = await open_organisations(http, servers.url("wallet"),
                                                servers.url("provisioning"), settings,
                                                args.organisations)
            client = LoadClient(servers.url("provisioning"))
            try:
                statuses, accepted, sending = await load(client, orgs, args.rate, args.seconds,
                                                         args.in_flight)
            finally:
                await client.close()
            drained_at = time.perf_counter()
            conn = await asyncpg.connect(settings.database_url)
            try:
                while (row := await conn.fetchrow(CHECKS_SQL))["open_requests"] > 0:
                    assert time.perf_counter() - drained_at < args.timeout, dict(row)
                    await asyncio.sleep(0.25)
                drain = time.perf_counter() - drained_at
                row = await conn.fetchrow(CHECKS_SQL)
                stored = await conn.fetchval(
                    "SELECT count(*) FROM provisioning.requests WHERE request_id = ANY($1::uuid[])",
                    accepted)
            finally:
                await conn.close()
            peaks = {name: peak_rss_mb(p.pid) for name, p in servers.processes.items()}
        finally:
            servers.stop()
    sent = sum(statuses.values())
    refused = sum(statuses[s] for s in REFUSALS)
    failed = sent - statuses[202] - refused
    lost = len(accepted) - stored  # accepted (202) but not stored
    print(f"asked {args.rate:,.0f}/s for {args.seconds:.0f} s: {sent:,} requests sent and "
          f"answered in {sending:.1f} s ({sent / sending:,.0f}/s achieved, "
          f"at most {args.in_flight} in flight)")
    print("answers: " + ", ".join(f"{s or 'none'}: {n:,}" for s, n in sorted(statuses.items())))
    print(f"every accepted request final {drain:.1f} s after the load ended; requests stored "
          f"{row['requests']:,}, open {row['open_requests']}, holds open for requests that did "
          f"not succeed {row['stray_holds']}, wallets inconsistent {row['inconsistent']}")
    for name, mb in peaks.items():
        print(f"{name}: peak resident memory {mb:,.0f} MB")
    print(f"asked_per_s={args.rate:.0f} achieved_per_s={sent / sending:.0f} "
          f"accepted={statuses[202]} refused={refused} failed={failed} drain_s={drain:.1f} "
          "peak_mb=" + ",".join(f"{n}:{mb:.0f}" for n, mb in peaks.items())
          + f" lost={lost} stray_holds={row['stray_holds']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=2_000.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--organisations", type=int, default=500)
    parser.add_argument("--in-flight", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=600.0)
    asyncio.run(main(parser.parse_args()))
