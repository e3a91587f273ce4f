"""Billing's SQL (asyncpg): a few multi-row statements per batch, never one per message."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from services.billing.domain import (
    Attempt,
    HourState,
    Line,
    MeteredHour,
    Statement,
    UsageEntry,
    VmMonth,
)
from shared.money import Money

SCHEMA = "billing"


# --- usage: hours, VM months, lines -------------------------------------------------------

async def lock_usage_partitions(conn: asyncpg.Connection, partitions: Sequence[int]
                                ) -> dict[int, date | None]:
    """Serialise usage batches per partition (two consumers may overlap in a rebalance);
    returns each partition's last closed month.

    Two statements: a statement sees the data as of its start, so one that waited for the
    lock would return the month closed before the wait, not the one its holder closed."""
    ids = sorted(set(partitions))
    await conn.execute(
        """SELECT pg_advisory_xact_lock(hashtext('billing.usage'), p)
           FROM unnest($1::int[]) AS p ORDER BY p""", ids)
    rows = await conn.fetch(
        f"""SELECT p AS usage_partition, u.closed_through FROM unnest($1::int[]) AS p
            LEFT JOIN {SCHEMA}.usage_partitions u ON u.usage_partition = p""", ids)
    return {r["usage_partition"]: r["closed_through"] for r in rows}


async def hour_states(conn: asyncpg.Connection, keys: Sequence[tuple[UUID, datetime]]
                      ) -> dict[tuple[UUID, datetime], HourState]:
    """The latest revision billed for each (vm, hour), and all revisions with a line."""
    if not keys:
        return {}
    # A lateral lookup per key, on the (vm_id, hour_start, revision) index: a plain join
    # let the planner hash the whole lines table for every batch once it had grown.
    rows = await conn.fetch(
        f"""SELECT k.vm_id, k.hour_start, l.revision, l.rated, l.hour_cap, l.seconds,
                   l.revisions
            FROM unnest($1::uuid[], $2::timestamptz[]) AS k(vm_id, hour_start)
            CROSS JOIN LATERAL (
                SELECT x.revision, x.rated, x.hour_cap, x.seconds,
                       array_agg(x.revision) OVER () AS revisions
                FROM {SCHEMA}.lines x
                WHERE x.vm_id = k.vm_id AND x.hour_start = k.hour_start
                ORDER BY x.revision DESC LIMIT 1) l""",
        [k[0] for k in keys], [k[1] for k in keys])
    return {(r["vm_id"], r["hour_start"]): HourState(
        r["revision"], r["rated"], r["hour_cap"], r["seconds"], frozenset(r["revisions"]))
        for r in rows}


async def vm_months(conn: asyncpg.Connection, keys: Sequence[tuple[UUID, date]]
                    ) -> dict[tuple[UUID, date], VmMonth]:
    if not keys:
        return {}
    rows = await conn.fetch(
        f"""SELECT v.vm_id, v.month, v.wallet_id, v.usage_partition, v.currency, v.rated,
                   v.cap, v.charged
            FROM unnest($1::uuid[], $2::date[]) AS k(vm_id, month)
            JOIN {SCHEMA}.vm_months v ON v.vm_id = k.vm_id AND v.month = k.month""",
        [k[0] for k in keys], [k[1] for k in keys])
    return {(r["vm_id"], r["month"]): VmMonth(r["vm_id"], r["month"], r["wallet_id"],
                                              r["currency"].strip(), r["rated"], r["cap"],
                                              r["charged"], partition=r["usage_partition"])
            for r in rows}


async def others_caps(conn: asyncpg.Connection, vm_month_keys: Sequence[tuple[UUID, date]],
                      batch_hours: Sequence[tuple[UUID, datetime]]
                      ) -> dict[tuple[UUID, date], int]:
    """Highest hour cap of each VM month's latest revisions, over the hours not in the batch
    (needed only when a correction may lower the cap)."""
    if not vm_month_keys:
        return {}
    rows = await conn.fetch(
        f"""SELECT vm_id, month, max(hour_cap) AS cap FROM (
                SELECT DISTINCT ON (l.vm_id, l.hour_start) l.vm_id, l.month, l.hour_cap
                FROM unnest($1::uuid[], $2::date[]) AS k(vm_id, month)
                JOIN {SCHEMA}.lines l ON l.vm_id = k.vm_id AND l.month = k.month
                WHERE (l.vm_id, l.hour_start) NOT IN (
                    SELECT * FROM unnest($3::uuid[], $4::timestamptz[]))
                ORDER BY l.vm_id, l.hour_start, l.revision DESC) latest
            GROUP BY vm_id, month""",
        [k[0] for k in vm_month_keys], [k[1] for k in vm_month_keys],
        [h[0] for h in batch_hours], [h[1] for h in batch_hours])
    found = {(r["vm_id"], r["month"]): int(r["cap"]) for r in rows}
    return {k: found.get(k, 0) for k in vm_month_keys}


LINE_COLUMNS = ("line_id", "usage_id", "usage_partition", "wallet_id", "organisation_id",
                "vm_id", "hour_start", "month", "booked_month", "revision", "seconds", "rated",
                "hour_cap", "amount", "stale", "currency", "rate_card_version", "item_code",
                "entry_id")


async def insert_lines(conn: asyncpg.Connection, lines: Sequence[Line],
                       entries: Sequence[UsageEntry]) -> None:
    """COPY, not INSERT: the batch's lines are new by construction (the Biller saw every
    revision already stored for their hours, under the partition's lock), and COPY encodes
    rows several times faster than array parameters. Each line names the entry charging it."""
    if not lines:
        return
    entry_of = {line: e.entry_id for e in entries for line in e.line_ids}
    await conn.copy_records_to_table(
        "lines", schema_name=SCHEMA, columns=LINE_COLUMNS, records=[
            (x.line_id, x.usage.usage_id, x.partition, x.usage.wallet_id,
             x.usage.organisation_id, x.usage.vm_id, x.usage.hour_start, x.month,
             x.booked_month, x.usage.revision, x.usage.seconds, x.rated.rated,
             x.rated.hour_cap, x.amount, x.stale, x.rated.currency, x.rated.rate_card_version,
             x.rated.item_code, entry_of.get(x.line_id))
            for x in lines])


ENTRY_COLUMNS = ("entry_id", "wallet_id", "hour_start", "revision", "kind", "amount",
                 "currency", "vm_ids", "line_ids", "amounts")


async def insert_usage_entries(conn: asyncpg.Connection, entries: Sequence[UsageEntry]) -> None:
    if not entries:
        return
    await conn.copy_records_to_table(
        "usage_entries", schema_name=SCHEMA, columns=ENTRY_COLUMNS, records=[
            (e.entry_id, e.wallet_id, e.hour_start, e.revision, e.kind, e.amount, e.currency,
             e.vm_ids, e.line_ids, e.amounts) for e in entries])


async def stored_entries(conn: asyncpg.Connection, line_ids: Sequence[UUID]
                         ) -> dict[UUID, UsageEntry]:
    """The entry that charged each of these lines, by line id (lines of amount 0 have none)."""
    if not line_ids:
        return {}
    rows = await conn.fetch(
        f"""SELECT l.line_id, e.entry_id, e.wallet_id, e.hour_start, e.revision, e.kind,
                   e.currency, e.vm_ids, e.line_ids, e.amounts
            FROM {SCHEMA}.lines l JOIN {SCHEMA}.usage_entries e ON e.entry_id = l.entry_id
            WHERE l.line_id = ANY($1::uuid[])""", list(line_ids))
    entries: dict[UUID, UsageEntry] = {}
    found = {}
    for r in rows:
        entry = entries.get(r["entry_id"])
        if entry is None:
            entry = entries[r["entry_id"]] = UsageEntry(
                r["entry_id"], r["wallet_id"], r["hour_start"], r["revision"], r["kind"],
                r["currency"].strip(), list(r["vm_ids"]), list(r["line_ids"]),
                list(r["amounts"]))
        found[r["line_id"]] = entry
    return found


async def save_vm_months(conn: asyncpg.Connection, months: Sequence[VmMonth]) -> None:
    if not months:
        return
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.vm_months (vm_id, month, wallet_id, usage_partition, currency,
                rated, cap, charged)
            SELECT * FROM unnest($1::uuid[], $2::date[], $3::uuid[], $4::int[], $5::text[],
                $6::bigint[], $7::bigint[], $8::bigint[])
            ON CONFLICT (vm_id, month) DO UPDATE SET rated = excluded.rated, cap = excluded.cap,
                charged = excluded.charged""",
        [m.vm_id for m in months], [m.month for m in months], [m.wallet_id for m in months],
        [m.partition for m in months], [m.currency for m in months],
        [m.rated for m in months], [m.cap for m in months], [m.charged for m in months])


async def insert_issues(conn: asyncpg.Connection,
                        issues: Sequence[tuple[str, UUID, date | None, str]]) -> None:
    """(issue_key, wallet_id, month, detail) rows; an issue already recorded is skipped."""
    if not issues:
        return
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.issues (issue_key, wallet_id, month, detail)
            SELECT * FROM unnest($1::text[], $2::uuid[], $3::date[], $4::text[])
            ON CONFLICT DO NOTHING""",
        [i[0] for i in issues], [i[1] for i in issues], [i[2] for i in issues],
        [i[3] for i in issues])


# --- watermarks and partitions -------------------------------------------------------------

async def raise_watermarks(conn: asyncpg.Connection,
                           marks: dict[tuple[int, int], datetime]) -> None:
    if not marks:
        return
    keys = sorted(marks)
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.watermarks (usage_partition, source_partition, up_to)
            SELECT * FROM unnest($1::int[], $2::int[], $3::timestamptz[])
            ON CONFLICT (usage_partition, source_partition)
            DO UPDATE SET up_to = greatest(watermarks.up_to, excluded.up_to)""",
        [k[0] for k in keys], [k[1] for k in keys], [marks[k] for k in keys])


async def lock_partitions(conn: asyncpg.Connection, partitions: Sequence[int]
                          ) -> dict[int, tuple[date | None, dict[int, datetime]]]:
    """Row-lock the partitions (in order), returning each one's last closed month and its
    watermarks by source partition. Closing a month and booking a wallet movement into the
    open month take this lock, so no movement lands on a month being closed.

    The lock, then the read, in two statements: a statement sees the data as of its start,
    so one that waited for the lock would read the watermarks from before the wait (and
    book a movement into the month its holder had just closed)."""
    ids = sorted(set(partitions))
    if not ids:
        return {}
    lock = f"""SELECT usage_partition FROM {SCHEMA}.usage_partitions
               WHERE usage_partition = ANY($1::int[]) ORDER BY usage_partition FOR UPDATE"""
    if len(await conn.fetch(lock, ids)) < len(ids):  # first time these partitions are seen
        await conn.execute(
            f"""INSERT INTO {SCHEMA}.usage_partitions (usage_partition)
                SELECT unnest($1::int[]) ON CONFLICT DO NOTHING""", ids)
        await conn.fetch(lock, ids)
    rows = await conn.fetch(
        f"""SELECT u.usage_partition, u.closed_through,
                   (SELECT array_agg(w.up_to ORDER BY w.source_partition)
                    FROM {SCHEMA}.watermarks w
                    WHERE w.usage_partition = u.usage_partition) AS up_tos,
                   (SELECT array_agg(w.source_partition ORDER BY w.source_partition)
                    FROM {SCHEMA}.watermarks w
                    WHERE w.usage_partition = u.usage_partition) AS sources
            FROM {SCHEMA}.usage_partitions u WHERE u.usage_partition = ANY($1::int[])""", ids)
    return {r["usage_partition"]: (r["closed_through"], dict(zip(
        r["sources"] or [], r["up_tos"] or [], strict=True))) for r in rows}


async def first_line_month(conn: asyncpg.Connection, partition: int) -> date | None:
    """The partition's first month with a billing line or a wallet opened in it."""
    month: date | None = await conn.fetchval(
        f"""SELECT min(month) FROM (
                SELECT min(month) AS month FROM {SCHEMA}.vm_months WHERE usage_partition = $1
                UNION ALL SELECT min(date_trunc('month', opened_at AT TIME ZONE 'UTC'))::date
                    FROM {SCHEMA}.wallets WHERE usage_partition = $1) firsts""", partition)
    return month


async def set_closed_through(conn: asyncpg.Connection, partition: int, month: date) -> None:
    await conn.execute(
        f"""UPDATE {SCHEMA}.usage_partitions SET closed_through = $2
            WHERE usage_partition = $1""", partition, month)


async def open_month_closes(conn: asyncpg.Connection, partition: int, month: date) -> None:
    """Pending closes for every wallet with usage in the month or before (a continuing
    customer), or with movements booked on it, before it (a customer whose money is still
    with us: a quiet month still gets its statement) or not booked yet, or opened before the
    month ended (every month a wallet existed has a statement)."""
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.month_closes (wallet_id, month, usage_partition, status)
            SELECT wallet_id, $2, $1, 'pending' FROM (
                SELECT wallet_id FROM {SCHEMA}.vm_months
                    WHERE usage_partition = $1 AND month <= $2
                UNION SELECT wallet_id FROM {SCHEMA}.movements
                    WHERE usage_partition = $1 AND (booked_month <= $2 OR booked_month IS NULL)
                UNION SELECT wallet_id FROM {SCHEMA}.wallets
                    WHERE usage_partition = $1
                      AND opened_at < ($2::date + interval '1 month') AT TIME ZONE 'UTC'
                ) wallets
            ON CONFLICT DO NOTHING""", partition, month)


async def pending_closes(conn: asyncpg.Connection, partitions: Sequence[int]
                         ) -> tuple[list[tuple[UUID, date, int]], dict[tuple[UUID, date], int]]:
    """Pending closes (locked) and, for each, how many of its lines are unconfirmed."""
    rows = await conn.fetch(
        f"""SELECT wallet_id, month, usage_partition FROM {SCHEMA}.month_closes
            WHERE status = 'pending' AND usage_partition = ANY($1::int[])
            ORDER BY wallet_id, month FOR UPDATE""", list(partitions))
    if not rows:
        return [], {}
    # The unconfirmed lines, from the wallets' unconfirmed entries (a partial index): every
    # line charging something is in one entry, and an entry's lines share their wallet, hour
    # and batch, so their statement month (its first line's).
    counts = await conn.fetch(
        f"""SELECT e.wallet_id, l.booked_month, sum(cardinality(e.line_ids)) AS n
            FROM {SCHEMA}.usage_entries e
            JOIN {SCHEMA}.lines l ON l.line_id = e.line_ids[1]
            WHERE e.wallet_id = ANY($1::uuid[]) AND NOT e.confirmed
            GROUP BY e.wallet_id, l.booked_month""",
        list({r["wallet_id"] for r in rows}))
    return ([(r["wallet_id"], r["month"], r["usage_partition"]) for r in rows],
            {(c["wallet_id"], c["booked_month"]): int(c["n"]) for c in counts})


# --- the inputs of a month's statement, for many wallets at once -----------------------------

async def assign_unbooked_movements(conn: asyncpg.Connection,
                                    closes: Sequence[tuple[UUID, date]]) -> None:
    """Movements and issues that came while no month was open go on the wallet's earliest
    month closing now (a close that catches up takes several months of one wallet)."""
    earliest = """(SELECT wallet_id, min(month) AS month
                    FROM unnest($1::uuid[], $2::date[]) AS c(wallet_id, month)
                    GROUP BY wallet_id) k"""
    await conn.execute(
        f"""UPDATE {SCHEMA}.movements m SET booked_month = k.month FROM {earliest}
            WHERE m.wallet_id = k.wallet_id AND m.booked_month IS NULL""",
        [c[0] for c in closes], [c[1] for c in closes])
    await conn.execute(
        f"""UPDATE {SCHEMA}.issues i SET month = k.month FROM {earliest}
            WHERE i.wallet_id = k.wallet_id AND i.month IS NULL""",
        [c[0] for c in closes], [c[1] for c in closes])


async def month_balances(conn: asyncpg.Connection, closes: Sequence[tuple[UUID, date]]
                         ) -> dict[tuple[UUID, date], asyncpg.Record]:
    rows = await conn.fetch(
        f"""SELECT k.wallet_id, k.month,
              -- the month before's closing balance; summed from the start only without it
              -- (a wallet's first month, or a close catching up several months)
              coalesce((SELECT (c.statement->'closing_balance'->>'amount_minor')::bigint
                        FROM {SCHEMA}.month_closes c
                        WHERE c.wallet_id = k.wallet_id AND c.status = 'closed'
                          AND c.month = (k.month - interval '1 month')::date),
            - (SELECT coalesce(sum(amount), 0) FROM {SCHEMA}.lines l
                 WHERE l.wallet_id = k.wallet_id AND l.booked_month < k.month)
            + (SELECT coalesce(sum(amount), 0) FROM {SCHEMA}.movements m
                 WHERE m.wallet_id = k.wallet_id AND m.booked_month < k.month)) AS opening,
              coalesce(b.charges, 0) AS charges, coalesce(b.usage_credits, 0) AS usage_credits,
              coalesce(b.unconfirmed_count, 0) AS unconfirmed_count,
              coalesce(b.unconfirmed_amount, 0) AS unconfirmed_amount,
              (SELECT coalesce(sum(amount), 0) FROM {SCHEMA}.movements m WHERE
                 m.wallet_id = k.wallet_id AND m.booked_month = k.month AND kind = 'top_up')
                 AS top_ups,
              (SELECT coalesce(sum(amount), 0) FROM {SCHEMA}.movements m WHERE
                 m.wallet_id = k.wallet_id AND m.booked_month = k.month AND kind = 'refund')
                 AS refunds,
            - (SELECT coalesce(sum(CASE e.kind WHEN 'debit' THEN e.amount
                                          ELSE -e.amount END), 0)
                 FROM {SCHEMA}.usage_entries e
                 WHERE e.wallet_id = k.wallet_id AND e.confirmed)
            + (SELECT coalesce(sum(amount), 0) FROM {SCHEMA}.movements m
                 WHERE m.wallet_id = k.wallet_id) AS mirror_total,
              w.last_balance_after, w.currency AS wallet_currency, w.billing_mode,
              w.organisation_id, w.organisation_name,
              (SELECT currency FROM {SCHEMA}.lines l WHERE l.wallet_id = k.wallet_id LIMIT 1)
                 AS line_currency
            FROM unnest($1::uuid[], $2::date[]) AS k(wallet_id, month)
            LEFT JOIN {SCHEMA}.wallets w ON w.wallet_id = k.wallet_id
            LEFT JOIN LATERAL (
                SELECT sum(l.amount) FILTER (WHERE l.amount > 0) AS charges,
                       -sum(l.amount) FILTER (WHERE l.amount < 0) AS usage_credits,
                       count(*) FILTER (WHERE l.amount <> 0 AND NOT c.confirmed)
                           AS unconfirmed_count,
                       sum(l.amount) FILTER (WHERE NOT c.confirmed) AS unconfirmed_amount
                FROM {SCHEMA}.lines l
                LEFT JOIN {SCHEMA}.usage_entries c ON c.entry_id = l.entry_id
                WHERE l.wallet_id = k.wallet_id AND l.booked_month = k.month) b ON true""",
        [c[0] for c in closes], [c[1] for c in closes])
    return {(r["wallet_id"], r["month"]): r for r in rows}


async def month_hours(conn: asyncpg.Connection, closes: Sequence[tuple[UUID, date]]
                      ) -> dict[tuple[UUID, date], dict[UUID, list[tuple[MeteredHour, int]]]]:
    """Each VM's metered hours in the month (latest revision of each hour) and hour caps."""
    rows = await conn.fetch(
        f"""SELECT DISTINCT ON (l.vm_id, l.hour_start) k.wallet_id, k.month, l.vm_id,
                   l.hour_start, l.seconds, l.rated, l.hour_cap
            FROM unnest($1::uuid[], $2::date[]) AS k(wallet_id, month)
            JOIN {SCHEMA}.vm_months v ON v.wallet_id = k.wallet_id AND v.month = k.month
            JOIN {SCHEMA}.lines l ON l.vm_id = v.vm_id AND l.month = v.month
            ORDER BY l.vm_id, l.hour_start, l.revision DESC""",
        [c[0] for c in closes], [c[1] for c in closes])
    result: dict[tuple[UUID, date], dict[UUID, list[tuple[MeteredHour, int]]]] = {}
    for r in rows:
        vms = result.setdefault((r["wallet_id"], r["month"]), {})
        vms.setdefault(r["vm_id"], []).append(
            (MeteredHour(r["hour_start"], r["seconds"], r["rated"]), r["hour_cap"]))
    return result


async def month_vm_totals(conn: asyncpg.Connection, closes: Sequence[tuple[UUID, date]]
                          ) -> list[asyncpg.Record]:
    """Per VM: the cap state and the sum of all lines for its hours in the month."""
    return list(await conn.fetch(
        f"""SELECT k.wallet_id, k.month, v.vm_id, v.cap,
                   (SELECT coalesce(sum(amount), 0) FROM {SCHEMA}.lines l
                      WHERE l.vm_id = v.vm_id AND l.month = v.month) AS charged
            FROM unnest($1::uuid[], $2::date[]) AS k(wallet_id, month)
            JOIN {SCHEMA}.vm_months v ON v.wallet_id = k.wallet_id AND v.month = k.month""",
        [c[0] for c in closes], [c[1] for c in closes]))


async def month_booked(conn: asyncpg.Connection, closes: Sequence[tuple[UUID, date]]
                       ) -> list[asyncpg.Record]:
    """Per VM and month of the hours billed: the lines booked on the statement."""
    return list(await conn.fetch(
        f"""SELECT k.wallet_id, k.month, l.vm_id, l.month AS hour_month,
                   sum(l.amount) AS amount,
                   coalesce(sum(l.amount) FILTER (WHERE l.amount = 0 OR c.confirmed),
                            0) AS confirmed_amount,
                   (array_agg(l.item_code ORDER BY l.hour_cap DESC, l.hour_start DESC))[1]
                       AS item_code
            FROM unnest($1::uuid[], $2::date[]) AS k(wallet_id, month)
            JOIN {SCHEMA}.lines l ON l.wallet_id = k.wallet_id AND l.booked_month = k.month
            LEFT JOIN {SCHEMA}.usage_entries c ON c.entry_id = l.entry_id
            WHERE NOT l.stale
            GROUP BY k.wallet_id, k.month, l.vm_id, l.month""",
        [c[0] for c in closes], [c[1] for c in closes]))


async def month_issues(conn: asyncpg.Connection, closes: Sequence[tuple[UUID, date]]
                       ) -> list[asyncpg.Record]:
    return list(await conn.fetch(
        f"""SELECT i.wallet_id, i.month, i.detail FROM unnest($1::uuid[], $2::date[])
                AS k(wallet_id, month)
            JOIN {SCHEMA}.issues i ON i.wallet_id = k.wallet_id AND i.month = k.month
            ORDER BY i.issue_id""",
        [c[0] for c in closes], [c[1] for c in closes]))


async def next_invoice_numbers(conn: asyncpg.Connection, count: int) -> list[int]:
    if count == 0:
        return []
    rows = await conn.fetch(
        f"SELECT nextval('{SCHEMA}.invoice_numbers') AS n FROM generate_series(1, $1)", count)
    return [int(r["n"]) for r in rows]


async def save_closes(conn: asyncpg.Connection, statements: Sequence[Statement],
                      documents: Sequence[dict[str, Any]]) -> None:
    await conn.execute(
        f"""UPDATE {SCHEMA}.month_closes c SET status = 'closed', statement = v.statement,
                closed_at = now()
            FROM unnest($1::uuid[], $2::date[], $3::jsonb[]) AS v(wallet_id, month, statement)
            WHERE c.wallet_id = v.wallet_id AND c.month = v.month""",
        [s.wallet_id for s in statements], [s.month for s in statements],
        [json.dumps(d) for d in documents])


async def save_invoices(conn: asyncpg.Connection, invoices: Sequence[dict[str, Any]]) -> None:
    if not invoices:
        return
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.invoices (document_number, wallet_id, month, organisation_id,
                document)
            SELECT * FROM unnest($1::text[], $2::uuid[], $3::date[], $4::uuid[], $5::jsonb[])
            ON CONFLICT DO NOTHING""",
        [i["document_number"] for i in invoices], [i["wallet_id"] for i in invoices],
        [date.fromisoformat(i["month"] + "-01") for i in invoices],
        [i["organisation_id"] for i in invoices], [json.dumps(i) for i in invoices])


# --- wallet events ------------------------------------------------------------------------------

async def upsert_wallets(conn: asyncpg.Connection, opened: Sequence[tuple[Any, ...]]) -> None:
    """(wallet_id, organisation_id, name, currency, billing_mode, usage_partition,
    opened_at) rows."""
    if not opened:
        return
    # One row per wallet (the last): a redelivered WalletOpened can share the batch with its
    # first delivery, and ON CONFLICT cannot touch a row twice in one statement.
    cols = list(zip(*{row[0]: row for row in opened}.values(), strict=True))
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.wallets (wallet_id, organisation_id, organisation_name, currency,
                billing_mode, usage_partition, opened_at, last_balance_after)
            SELECT *, 0 FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                $6::int[], $7::timestamptz[])
            ON CONFLICT (wallet_id) DO UPDATE SET organisation_name = excluded.organisation_name,
                billing_mode = excluded.billing_mode,
                opened_at = least({SCHEMA}.wallets.opened_at, excluded.opened_at)""",
        *[list(c) for c in cols])


async def wallet_currencies(conn: asyncpg.Connection, wallet_ids: Sequence[UUID]
                            ) -> dict[UUID, str]:
    """The currency of each of these wallets billing has heard of (wallet.opened)."""
    rows = await conn.fetch(
        f"SELECT wallet_id, currency FROM {SCHEMA}.wallets WHERE wallet_id = ANY($1::uuid[])",
        list(wallet_ids))
    return {r["wallet_id"]: r["currency"].strip() for r in rows}


async def set_last_balances(conn: asyncpg.Connection, balances: dict[UUID, int]) -> None:
    if not balances:
        return
    await conn.execute(
        f"""UPDATE {SCHEMA}.wallets w SET last_balance_after = v.balance
            FROM unnest($1::uuid[], $2::bigint[]) AS v(wallet_id, balance)
            WHERE w.wallet_id = v.wallet_id""",
        list(balances), list(balances.values()))


async def insert_movements(conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """(wallet_id, movement_key, kind, amount, booked_month, usage_partition) rows."""
    if not rows:
        return
    cols = list(zip(*rows, strict=True))
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.movements (wallet_id, movement_key, kind, amount, booked_month,
                usage_partition)
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::date[],
                $6::int[])
            ON CONFLICT DO NOTHING""",
        *[list(c) for c in cols])


@dataclass(frozen=True, slots=True)
class Confirmed:
    """What billing's entries say about one `DebitsApplied`: the sums of the entries it
    names, and how many of its ids name no entry (the first of them, if any)."""

    debited: int
    credited: int
    unknown: int
    first_unknown: UUID | None


async def confirm_entries(conn: asyncpg.Connection,
                          applied: Sequence[tuple[list[UUID], list[UUID]]]) -> list[Confirmed]:
    """Mark the entries of each (debit ids, credit ids) booked by the wallet, and sum what
    billing has for them, per event: one statement, one row back per entry named."""
    ids = list({i for debits, credits in applied for i in (*debits, *credits)})
    rows = await conn.fetch(
        f"""UPDATE {SCHEMA}.usage_entries SET confirmed = true
            WHERE entry_id = ANY($1::uuid[]) RETURNING entry_id, kind, amount""",
        ids) if ids else []
    known = {r["entry_id"]: (r["kind"], int(r["amount"])) for r in rows}
    results = []
    for debits, credits in applied:
        debited = credited = 0
        unknown: list[UUID] = []
        for ids_named, named_kind in ((debits, "debit"), (credits, "credit")):
            for entry_id in ids_named:
                found = known.get(entry_id)
                if found is None:
                    unknown.append(entry_id)
                    continue
                kind, amount = found
                # an id sent as the other kind counts against its own, so the sums differ
                signed = amount if kind == named_kind else -amount
                if named_kind == "debit":
                    debited += signed
                else:
                    credited += signed
        results.append(Confirmed(debited, credited, len(unknown),
                                 unknown[0] if unknown else None))
    return results


async def record_attempts(conn: asyncpg.Connection, attempts: Sequence[Attempt]) -> set[UUID]:
    """Returns the ids recorded now (the others were recorded before: never charge them)."""
    if not attempts:
        return set()
    rows = await conn.fetch(
        f"""INSERT INTO {SCHEMA}.topup_attempts (attempt_id, wallet_id, low_balance_event_id,
                amount, currency, card_token, correlation_id, cause_occurred_at, status)
            SELECT *, 'pending' FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[],
                $5::text[], $6::text[], $7::uuid[], $8::timestamptz[])
            ON CONFLICT DO NOTHING RETURNING attempt_id""",
        [a.attempt_id for a in attempts], [a.wallet_id for a in attempts],
        [a.cause_id for a in attempts], [a.amount.amount for a in attempts],
        [a.amount.currency for a in attempts], [a.card_token for a in attempts],
        [a.correlation_id for a in attempts], [a.occurred_at for a in attempts])
    return {r["attempt_id"] for r in rows}


async def pending_attempts(conn: asyncpg.Connection, older_than: timedelta,
                           younger_than: timedelta) -> list[Attempt]:
    """Attempts recorded between `younger_than` and `older_than` ago and still pending: their
    outcome was never recorded."""
    rows = await conn.fetch(
        f"""SELECT attempt_id, wallet_id, amount, currency, card_token, low_balance_event_id,
                   coalesce(correlation_id, low_balance_event_id) AS correlation_id,
                   coalesce(cause_occurred_at, created_at) AS occurred_at
            FROM {SCHEMA}.topup_attempts
            WHERE status = 'pending' AND created_at < now() - $1::interval
                AND created_at >= now() - $2::interval
            ORDER BY created_at LIMIT 1000""", older_than, younger_than)
    return [Attempt(r["attempt_id"], r["wallet_id"], Money(r["amount"], r["currency"].strip()),
                    r["card_token"], r["low_balance_event_id"], r["correlation_id"],
                    r["occurred_at"]) for r in rows]


async def abandoned_attempts(conn: asyncpg.Connection, older_than: timedelta) -> int:
    """How many attempts are pending for longer than settling covers (for an operator)."""
    count: int = await conn.fetchval(
        f"""SELECT count(*) FROM {SCHEMA}.topup_attempts
            WHERE status = 'pending' AND created_at < now() - $1::interval""", older_than)
    return count


async def decide_attempts(conn: asyncpg.Connection,
                          outcomes: Sequence[tuple[UUID, str, str]]) -> set[UUID]:
    """Record outcomes of attempts still pending; returns the ids decided now."""
    if not outcomes:
        return set()
    rows = await conn.fetch(
        f"""UPDATE {SCHEMA}.topup_attempts a SET status = v.status, detail = v.detail,
                decided_at = now()
            FROM unnest($1::uuid[], $2::text[], $3::text[]) AS v(attempt_id, status, detail)
            WHERE a.attempt_id = v.attempt_id AND a.status = 'pending'
            RETURNING a.attempt_id""",
        [o[0] for o in outcomes], [o[1] for o in outcomes], [o[2] for o in outcomes])
    return {r["attempt_id"] for r in rows}


# --- reads for the API --------------------------------------------------------------------------

async def statement(conn: asyncpg.Connection, wallet_id: UUID, month: date
                    ) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""SELECT status, statement FROM {SCHEMA}.month_closes
            WHERE wallet_id = $1 AND month = $2""", wallet_id, month)
    return row


async def invoice(conn: asyncpg.Connection, wallet_id: UUID, month: date) -> dict[str, Any] | None:
    document = await conn.fetchval(
        f"SELECT document FROM {SCHEMA}.invoices WHERE wallet_id = $1 AND month = $2",
        wallet_id, month)
    return json.loads(document) if document is not None else None


async def topup_attempts(conn: asyncpg.Connection, wallet_id: UUID, limit: int
                         ) -> list[asyncpg.Record]:
    """A wallet's auto top-up attempts, newest first (the card token stays in billing)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""SELECT attempt_id, created_at, decided_at, amount, currency, status, detail
            FROM {SCHEMA}.topup_attempts WHERE wallet_id = $1
            ORDER BY created_at DESC, attempt_id LIMIT $2""", wallet_id, limit)
    return rows


async def wallet_known(conn: asyncpg.Connection, wallet_id: UUID) -> bool:
    return bool(await conn.fetchval(
        f"""SELECT EXISTS (SELECT 1 FROM {SCHEMA}.wallets WHERE wallet_id = $1)
               OR EXISTS (SELECT 1 FROM {SCHEMA}.lines WHERE wallet_id = $1)""", wallet_id))


async def wallet_organisation(conn: asyncpg.Connection, wallet_id: UUID) -> UUID | None:
    """The organisation a wallet billing knows of belongs to (for its callers' keys)."""
    organisation_id: UUID | None = await conn.fetchval(
        f"""(SELECT organisation_id FROM {SCHEMA}.wallets WHERE wallet_id = $1)
            UNION ALL (SELECT organisation_id FROM {SCHEMA}.lines WHERE wallet_id = $1 LIMIT 1)
            LIMIT 1""", wallet_id)
    return organisation_id
