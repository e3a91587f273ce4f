"""billing_0003 and wallet_0002 on a database with data: lines charged one by one become
entries of their own under their line ids, confirmed as they were; refunds of a one-VM usage
row are named that VM's. Nothing else changes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg

from shared.db import SERVICES_DIR, drop_database, ensure_database, with_database

BEFORE = ["wallet/migrations/wallet_0001_init.sql", "billing/migrations/billing_0001_init.sql",
          "billing/migrations/billing_0002_settle_pending_attempts.sql"]
UNDER_TEST = ["wallet/migrations/wallet_0002_usage_entries.sql",
              "billing/migrations/billing_0003_usage_entries.sql"]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def test_lines_and_refunds_from_before_usage_entries_are_carried_over(infrastructure):
    url = with_database(infrastructure.server_url, f"m_{uuid.uuid4().hex[:10]}")
    await ensure_database(url)
    conn = await asyncpg.connect(url)
    try:
        for path in BEFORE:
            await conn.execute((SERVICES_DIR / path).read_text())
        wallet, org, vm = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        debit, credit, idle = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        await conn.execute(
            """INSERT INTO billing.lines (line_id, usage_id, usage_partition, wallet_id,
                   organisation_id, vm_id, hour_start, month, booked_month, revision, seconds,
                   rated, hour_cap, amount, stale, currency, rate_card_version, item_code)
               SELECT l, gen_random_uuid(), 0, $4, $5, $6,
                   $7::timestamptz + make_interval(hours => h), '2026-01-01', '2026-01-01', r,
                   3600, 41, 30000, a, false, 'ZAR', 'v', 'VM-M'
               FROM unnest($1::uuid[], $2::int[], $3::bigint[], ARRAY[0, 0, 1])
                   AS x(l, r, a, h)""",
            [debit, credit, idle], [0, 1, 0], [41, -21, 0], wallet, org, vm, T0)
        await conn.execute("INSERT INTO billing.confirmations (line_id) VALUES ($1)", debit)
        await conn.execute("INSERT INTO wallet.organisations (organisation_id, name, kind) "
                           "VALUES ($1, 'o', 'customer')", org)
        await conn.execute("INSERT INTO wallet.organisation_wallets (wallet_id, organisation_id, "
                           "currency, billing_mode) VALUES ($1, $2, 'ZAR', 'PAYG')", wallet, org)
        charged = await conn.fetchval(
            """INSERT INTO wallet.wallet_transactions (wallet_id, kind, amount, balance_after,
                   idempotency_key, vm_id, occurred_at)
               VALUES ($1, 'usage_debit', -41, -41, 'debit:' || $2::text, $3, $4)
               RETURNING entry_id""", wallet, str(debit), vm, T0)
        await conn.execute(
            """INSERT INTO wallet.wallet_transactions (wallet_id, kind, amount, balance_after,
                   idempotency_key, refunds_entry_id, occurred_at)
               VALUES ($1, 'refund', 10, -31, 'refund:r', $2, $3)""", wallet, charged, T0)

        for path in UNDER_TEST:
            await conn.execute((SERVICES_DIR / path).read_text())

        entries = await conn.fetch(
            """SELECT entry_id, kind, amount, confirmed, vm_ids, line_ids, amounts
               FROM billing.usage_entries ORDER BY revision""")
        assert [(e["entry_id"], e["kind"], e["amount"], e["confirmed"], e["vm_ids"],
                 e["line_ids"], e["amounts"]) for e in entries] == [
            (debit, "debit", 41, True, [vm], [debit], [41]),
            (credit, "credit", 21, False, [vm], [credit], [21])]
        lines = {r["line_id"]: r["entry_id"] for r in await conn.fetch(
            "SELECT line_id, entry_id FROM billing.lines")}
        assert lines == {debit: debit, credit: credit, idle: None}
        assert not await conn.fetchval("SELECT to_regclass('billing.confirmations') IS NOT NULL")
        ledger = await conn.fetch(
            """SELECT kind, amount, vm_id, vm_ids FROM wallet.wallet_transactions
               ORDER BY entry_id""")
        assert [(r["kind"], r["amount"], r["vm_id"], r["vm_ids"]) for r in ledger] == [
            ("usage_debit", -41, vm, None), ("refund", 10, vm, None)]
    finally:
        await conn.close()
        await drop_database(url)
