"""Closing a month reads by key and a recent range (issue #18): on a billing database with
months of history, the month close's reads find the wallet's unconfirmed entries by a partial
index, take the opening balance from the month before's statement and sum confirmed entries
from an index alone — no sequential scan of lines or entries, and no line of an earlier month
read. Run on the real repository functions, each read under EXPLAIN ANALYZE."""

from __future__ import annotations

import json
import uuid
from datetime import date

from services.billing import repository as repo
from tests.integration.plans import PlanRecorder

WALLETS = 60
HISTORY = [date(2026, 7, 1), date(2026, 8, 1), date(2026, 9, 1), date(2026, 10, 1)]
NOVEMBER = date(2026, 11, 1)
CENTS_PER_HOUR = 10
UNCONFIRMED = 3  # the first wallet's last hours, not confirmed by the wallet yet


async def fill(db) -> list[uuid.UUID]:
    """Every wallet: one VM charging 10 cents an hour from July to November, an entry per
    line, confirmed except the first wallet's last three hours; July to October closed with
    their statements, November pending."""
    wallets = sorted(uuid.uuid4() for _ in range(WALLETS))
    await db.execute(
        """INSERT INTO billing.wallets (wallet_id, organisation_id, organisation_name, currency,
               billing_mode, usage_partition, last_balance_after)
           SELECT w, gen_random_uuid(), 'Org', 'ZAR', 'PAYG', 0, 0 FROM unnest($1::uuid[]) w""",
        wallets)
    await db.execute(
        """INSERT INTO billing.lines (line_id, usage_id, usage_partition, wallet_id,
               organisation_id, vm_id, hour_start, month, booked_month, revision, seconds,
               rated, hour_cap, amount, currency, rate_card_version, item_code, entry_id)
           SELECT md5(w::text || h::text)::uuid, gen_random_uuid(), 0, w, w, w, h,
                  date_trunc('month', h AT TIME ZONE 'UTC')::date,
                  date_trunc('month', h AT TIME ZONE 'UTC')::date, 0, 3600, $2, 0, $2, 'ZAR',
                  'v1', 'VM', md5(w::text || h::text)::uuid
           FROM unnest($1::uuid[]) w,
                generate_series(timestamptz '2026-07-01 00:00Z', '2026-11-30 23:00Z',
                                interval '1 hour') h""", wallets, CENTS_PER_HOUR)
    await db.execute(
        """INSERT INTO billing.usage_entries (entry_id, wallet_id, hour_start, revision, kind,
               amount, currency, vm_ids, line_ids, amounts, confirmed)
           SELECT line_id, wallet_id, hour_start, 0, 'debit', amount, 'ZAR', ARRAY[vm_id],
                  ARRAY[line_id], ARRAY[amount], true FROM billing.lines""")
    await db.execute(
        """UPDATE billing.usage_entries SET confirmed = false WHERE entry_id IN (
               SELECT entry_id FROM billing.usage_entries WHERE wallet_id = $1
               ORDER BY hour_start DESC LIMIT $2)""", wallets[0], UNCONFIRMED)
    for month in HISTORY:
        closing = -CENTS_PER_HOUR * await db.fetchval(
            "SELECT count(*) FROM billing.lines WHERE wallet_id = $1 AND month <= $2",
            wallets[1], month)
        statement = json.dumps({"closing_balance": {"amount_minor": closing, "currency": "ZAR"}})
        await db.execute(
            """INSERT INTO billing.month_closes (wallet_id, month, usage_partition, status,
                   statement, closed_at)
               SELECT w, $2, 0, 'closed', $3::jsonb, now() FROM unnest($1::uuid[]) w""",
            wallets, month, statement)
    await db.execute(
        """INSERT INTO billing.month_closes (wallet_id, month, usage_partition, status)
           SELECT w, $2, 0, 'pending' FROM unnest($1::uuid[]) w""", wallets, NOVEMBER)
    await db.execute("ANALYZE billing.lines, billing.usage_entries, billing.month_closes, "
                     "billing.wallets")
    return wallets


async def test_a_month_close_reads_neither_earlier_lines_nor_every_entry(env, db):
    wallets = await fill(db)
    lines_per_month = {m: await db.fetchval(
        "SELECT count(*) FROM billing.lines WHERE month = $1", m) for m in [NOVEMBER]}
    recorder = PlanRecorder(db)

    async with db.transaction():
        pending, unconfirmed = await repo.pending_closes(recorder, [0])  # type: ignore[arg-type]
    assert sorted(pending) == [(w, NOVEMBER, 0) for w in wallets]
    assert {k: n for k, n in unconfirmed.items() if k[1] == NOVEMBER} == {
        (wallets[0], NOVEMBER): UNCONFIRMED}

    closes = [(w, NOVEMBER) for w in wallets]
    balances = await repo.month_balances(recorder, closes)  # type: ignore[arg-type]
    hours_before = sum((date(m.year + m.month // 12, m.month % 12 + 1, 1) - m).days * 24
                       for m in HISTORY)
    for w in wallets:
        b = balances[(w, NOVEMBER)]
        assert b["opening"] == -CENTS_PER_HOUR * hours_before  # October's closing
        confirmed = (hours_before + 30 * 24 - (UNCONFIRMED if w == wallets[0] else 0))
        assert b["mirror_total"] == -CENTS_PER_HOUR * confirmed
        assert b["unconfirmed_count"] == (UNCONFIRMED if w == wallets[0] else 0)

    assert not recorder.seq_scans() & {"lines", "usage_entries"}, [
        (p.sql[:80], p.seq_scans()) for p in recorder.plans]
    # November's lines (the statement's charges) and one line per wallet (its currency),
    # none of the four months before; the unconfirmed entries once more for the count.
    assert recorder.rows_read("lines") <= lines_per_month[NOVEMBER] + 2 * WALLETS + UNCONFIRMED
