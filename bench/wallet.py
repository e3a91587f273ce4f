"""Wallet throughput through the real broker and database.

  decisions_per_s        reservation requests -> decisions (holds and their events) committed
  naive_decisions_per_s  the same with one database transaction per message (batch size 1)
  debits_per_s           usage lines booked per second, as billing sends them: one
                         `ChargeUsage` per wallet, one ledger row per wallet-hour entry of
                         --vms-per-entry VMs (the line ids and amounts per VM with it)

Usage: python -m bench.wallet [--wallets N] [--decisions N] [--naive N] [--debits N]
                              [--vms-per-entry N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import asyncpg
import uvloop
from aiokafka import AIOKafkaProducer

from bench.infra import bench_settings
from services.wallet.app import WalletService
from shared.contracts.wallet import ChargeUsage, ReserveFunds, UsageEntry
from shared.logs import configure_logging
from shared.money import MoneyModel
from shared.settings import Settings
from shared.topics import BILLING_DEBITS, PROVISIONING_REQUESTS

START = datetime(2026, 1, 1, tzinfo=UTC)


async def open_wallets(url: str, count: int, balance: int) -> list[tuple[UUID, UUID]]:
    wallets = [(uuid4(), uuid4()) for _ in range(count)]
    conn = await asyncpg.connect(url)
    try:
        orgs, ids = [o for o, _ in wallets], [w for _, w in wallets]
        await conn.execute("""INSERT INTO wallet.organisations (organisation_id, name, kind)
                              SELECT o, 'bench', 'customer' FROM unnest($1::uuid[]) o""", orgs)
        await conn.execute("""INSERT INTO wallet.organisation_wallets
                                (wallet_id, organisation_id, currency, billing_mode, balance)
                              SELECT w, o, 'ZAR', 'PAYG', $3
                              FROM unnest($1::uuid[], $2::uuid[]) AS t(w, o)""", ids, orgs, balance)
        await conn.execute("""INSERT INTO wallet.wallet_transactions (wallet_id, kind, amount,
                                balance_after, idempotency_key, occurred_at)
                              SELECT w, 'top_up', $2, $2, 'bench-opening', now()
                              FROM unnest($1::uuid[]) w""", ids, balance)
    finally:
        await conn.close()
    return wallets


async def produce(settings: Settings, topic: str, items: list[tuple[UUID, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, linger_ms=5,
                                max_batch_size=512 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=str(key).encode()) for key, value in items]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def decisions_run(settings: Settings, wallets: list[tuple[UUID, UUID]], count: int) -> float:
    """A backlog of requests is produced first; the clock runs from the first decision
    committed to the last, so consumer-group start-up is not counted."""
    requests = []
    for n in range(count):
        org, wallet = wallets[n % len(wallets)]
        message = ReserveFunds(request_id=uuid4(), wallet_id=wallet, organisation_id=org,
                               vm_id=uuid4(), amount=MoneyModel(amount_minor=100))
        requests.append((wallet, message.model_dump_json().encode()))
    await produce(settings, settings.topic(PROVISIONING_REQUESTS.name), requests)
    decided = "SELECT count(*) FROM wallet.holds"
    return await drain_rate(settings, decided, count)


async def drain_rate(settings: Settings, count_sql: str, expected: int) -> float:
    """Start the wallet service on a backlog; the rate from the first to the last commit."""
    service = WalletService(settings)
    conn = await asyncpg.connect(settings.database_url)
    await service.start()
    try:
        while (first := await conn.fetchval(count_sql)) == 0:
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        while (done := await conn.fetchval(count_sql)) < expected:
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        consistent = await conn.fetchval(
            """SELECT bool_and(w.balance = l.total) FROM wallet.organisation_wallets w
               JOIN (SELECT wallet_id, sum(amount) AS total FROM wallet.wallet_transactions
                     GROUP BY wallet_id) l USING (wallet_id)""")
        print(f"  {done - first} committed in {elapsed:.2f}s; ledger consistent: {consistent}")
        return (done - first) / elapsed
    finally:
        await service.stop()
        await conn.close()


async def debits_run(settings: Settings, wallets: list[tuple[UUID, UUID]], count: int,
                     vms_per_entry: int) -> tuple[float, float]:
    """Usage lines as billing sends them: per wallet and batch one `ChargeUsage`, one entry per
    hour of `vms_per_entry` VMs (each VM's line id and amount). Returns (lines, entries) per
    second booked."""
    messages = []
    hours = max(1, count // (len(wallets) * vms_per_entry))
    for n in range(count // vms_per_entry):
        _, wallet = wallets[n % len(wallets)]
        hour = START + timedelta(hours=n // len(wallets) % hours)
        entry = UsageEntry(entry_id=uuid4(), kind="debit", hour_start=hour, revision=0,
                           amount_minor=41 * vms_per_entry,
                           vm_ids=[uuid4() for _ in range(vms_per_entry)],
                           line_ids=[uuid4() for _ in range(vms_per_entry)],
                           vm_amounts=[41] * vms_per_entry)
        message = ChargeUsage(wallet_id=wallet, currency="ZAR", entries=[entry])
        messages.append((wallet, message.model_dump_json().encode()))
    await produce(settings, settings.topic(BILLING_DEBITS.name), messages)
    booked = """SELECT coalesce(sum(cardinality(vm_ids)), 0) FROM wallet.wallet_transactions
                WHERE kind = 'usage_debit'"""
    lines = await drain_rate(settings, booked, len(messages) * vms_per_entry)
    return lines, lines / vms_per_entry


async def main(args: argparse.Namespace) -> None:
    configure_logging("WARNING", json=False)
    async with bench_settings() as settings:
        wallets = await open_wallets(settings.database_url, args.wallets, 10**12)
        decisions = await decisions_run(settings, wallets, args.decisions)
        print(f"batched decisions: {args.decisions} in batches of up to "
              f"{settings.consumer_batch_size}: {decisions:,.0f}/s")
    async with bench_settings(consumer_batch_size=1) as naive_settings:
        wallets = await open_wallets(naive_settings.database_url, args.wallets, 10**12)
        naive = await decisions_run(naive_settings, wallets, args.naive)
        print(f"naive decisions (one transaction per message): {args.naive}: {naive:,.0f}/s")
    async with bench_settings() as settings:
        wallets = await open_wallets(settings.database_url, args.wallets, 10**12)
        debits, entries = await debits_run(settings, wallets, args.debits, args.vms_per_entry)
        print(f"usage lines booked as billing sends them: {args.debits} lines in entries of "
              f"{args.vms_per_entry} VMs: {debits:,.0f} lines/s ({entries:,.0f} entries/s)")
    print(f"batched/naive decisions ratio: {decisions / naive:.1f}x")
    print(f"decisions_per_s={decisions:.0f} naive_decisions_per_s={naive:.0f} "
          f"debits_per_s={debits:.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wallets", type=int, default=1_000)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--naive", type=int, default=2_000)
    parser.add_argument("--debits", type=int, default=100_000,
                        help="usage lines (billing lines) to book")
    parser.add_argument("--vms-per-entry", type=int, default=10,
                        help="VMs per wallet entry (the pipeline's fleet: 10 VMs a wallet)")
    uvloop.run(main(parser.parse_args()))
