"""Wallet persistence on asyncpg: whole batches in a few multi-row statements."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from uuid import UUID

import asyncpg

from services.wallet.domain import (
    AutoTopUp,
    BillingMode,
    Hold,
    HoldStatus,
    HourEntry,
    LedgerEntry,
    PastRefund,
    Refundable,
    Wallet,
)
from shared.consumer import CLAIM_BATCH
from shared.db import advance_stored_clock, stored_clock
from shared.outbox import COPY_THRESHOLD, Outgoing, Queued, enqueue, queued

SCHEMA = "wallet"
# The ledger's unique (wallet_id, idempotency_key): what makes booking a charge idempotent.
LEDGER_KEY = "wallet_transactions_wallet_id_idempotency_key_key"

_WALLET_COLUMNS = """w.wallet_id, w.organisation_id, w.currency, w.billing_mode, w.credit_limit,
    w.balance, w.held, w.status, w.low_balance_threshold, w.low_balance, w.depleted,
    w.auto_topup_threshold, w.auto_topup_amount, w.auto_topup_card_token"""


def _wallet(row: asyncpg.Record) -> Wallet:
    auto = None
    if row["auto_topup_amount"] is not None:
        auto = AutoTopUp(row["auto_topup_threshold"], row["auto_topup_amount"],
                         row["auto_topup_card_token"])
    return Wallet(
        wallet_id=row["wallet_id"], organisation_id=row["organisation_id"],
        currency=row["currency"].strip(), billing_mode=BillingMode(row["billing_mode"]),
        credit_limit=row["credit_limit"], balance=row["balance"], held=row["held"],
        suspended=row["status"] == "suspended",
        low_balance_threshold=row["low_balance_threshold"], low_balance=row["low_balance"],
        depleted=row["depleted"], auto_topup=auto,
    )


def _hold(row: asyncpg.Record) -> Hold:
    return Hold(row["hold_id"], row["request_id"], row["wallet_id"], row["vm_id"],
                row["purpose"], row["amount"], row["remaining"], HoldStatus(row["status"]),
                row["created_at"], row["expires_at"], row["closed_at"])


async def lock_wallets(conn: asyncpg.Connection, wallet_ids: Iterable[UUID]) -> dict[UUID, Wallet]:
    """Load and row-lock wallets, in id order so concurrent batches cannot deadlock."""
    ids = sorted(set(wallet_ids))
    if not ids:
        return {}
    rows = await conn.fetch(
        f"""SELECT {_WALLET_COLUMNS} FROM {SCHEMA}.organisation_wallets w
            WHERE w.wallet_id = ANY($1::uuid[]) ORDER BY w.wallet_id FOR UPDATE""", ids)
    return {r["wallet_id"]: _wallet(r) for r in rows}


async def claim_and_lock(conn: asyncpg.Connection, message_ids: Sequence[UUID],
                         digests: Sequence[bytes], wallet_ids: Iterable[UUID]
                         ) -> tuple[set[UUID], dict[UUID, bytes | None], datetime | None,
                                    dict[UUID, Wallet]]:
    """A batch's inbox claim and the row locks on its wallets in one round trip: the ids not
    seen before, the ids seen before with the digest stored for each (`judge_claims` tells
    a redelivery from an id reused with other content), the wallet's clock (messages older
    than the inbox window are refused by it), and the wallets (of every message, repeats
    too: locking one more changes nothing), locked in id order so concurrent batches cannot
    deadlock."""
    rows = await conn.fetch(
        f"""WITH batch AS ({CLAIM_BATCH}), claimed AS (
                INSERT INTO {SCHEMA}.inbox (message_id, digest) SELECT id, digest FROM batch
                ON CONFLICT DO NOTHING RETURNING message_id
            ), seen AS (
                -- the rows stored before this statement (its parts share one snapshot)
                SELECT i.message_id, i.digest FROM {SCHEMA}.inbox i
                JOIN batch b ON b.id = i.message_id
            ), locked AS (
                -- after the claim (it reads `claimed`), as it was in two statements: a
                -- claim taken after a wallet lock could deadlock with the webhook's top-up
                SELECT {_WALLET_COLUMNS} FROM {SCHEMA}.organisation_wallets w
                WHERE w.wallet_id = ANY($3::uuid[]) AND (SELECT count(*) FROM claimed) >= 0
                ORDER BY w.wallet_id FOR UPDATE
            )
            -- the claim's answer once, on the first row (not repeated on every wallet's)
            SELECT CASE WHEN l.n IS NULL OR l.n = 1
                        THEN (SELECT array_agg(message_id) FROM claimed) END AS fresh,
                   CASE WHEN l.n IS NULL OR l.n = 1
                        THEN (SELECT array_agg(message_id ORDER BY message_id) FROM seen)
                        END AS seen_ids,
                   CASE WHEN l.n IS NULL OR l.n = 1
                        THEN (SELECT array_agg(digest ORDER BY message_id) FROM seen)
                        END AS seen_digests,
                   l.n IS NULL OR l.n = 1 AS head,
                   (SELECT now FROM {SCHEMA}.clock WHERE id = 1) AS clock, l.*
            FROM (VALUES (1)) AS one(x)
            LEFT JOIN (SELECT locked.*, row_number() OVER () AS n FROM locked) l ON true""",
        list(message_ids), list(digests), sorted(set(wallet_ids)))
    [first] = [r for r in rows if r["head"]]
    stored = dict(zip(first["seen_ids"] or (), first["seen_digests"] or (), strict=True))
    return (set(first["fresh"] or ()), stored, first["clock"],
            {r["wallet_id"]: _wallet(r) for r in rows if r["wallet_id"] is not None})


async def get_wallet(conn: asyncpg.Connection, wallet_id: UUID) -> Wallet | None:
    row = await conn.fetchrow(
        f"SELECT {_WALLET_COLUMNS} FROM {SCHEMA}.organisation_wallets w WHERE w.wallet_id = $1",
        wallet_id)
    return _wallet(row) if row else None


_HOLD_COLUMNS = """hold_id, request_id, wallet_id, vm_id, purpose, amount, remaining, status,
    created_at, expires_at, closed_at"""


async def open_holds_for_wallets(conn: asyncpg.Connection, wallet_ids: Sequence[UUID]
                                 ) -> list[Hold]:
    if not wallet_ids:
        return []
    rows = await conn.fetch(
        f"""SELECT {_HOLD_COLUMNS} FROM {SCHEMA}.holds
            WHERE wallet_id = ANY($1::uuid[]) AND status IN ('pending', 'active')
            ORDER BY created_at, hold_id""", list(wallet_ids))
    return [_hold(r) for r in rows]


async def hold_owners(conn: asyncpg.Connection, request_ids: Sequence[UUID]
                      ) -> dict[UUID, UUID]:
    """The wallet holding each of these requests' open holds (request id -> wallet id)."""
    if not request_ids:
        return {}
    rows = await conn.fetch(
        f"""SELECT request_id, wallet_id FROM {SCHEMA}.holds
            WHERE request_id = ANY($1::uuid[]) AND status IN ('pending', 'active')""",
        list(request_ids))
    return {r["request_id"]: r["wallet_id"] for r in rows}


async def clock_now(conn: asyncpg.Connection) -> datetime | None:
    return await stored_clock(conn, SCHEMA)


async def advance_clock(conn: asyncpg.Connection, at: datetime) -> None:
    await advance_stored_clock(conn, SCHEMA, at)


async def expired_pending_wallets(conn: asyncpg.Connection, now: datetime) -> list[UUID]:
    rows = await conn.fetch(
        f"""SELECT DISTINCT wallet_id FROM {SCHEMA}.holds
            WHERE status = 'pending' AND expires_at <= $1""",
        now)
    return [r["wallet_id"] for r in rows]


async def save_wallets(conn: asyncpg.Connection, wallets: Sequence[Wallet]) -> None:
    if not wallets:
        return
    await conn.execute(
        f"""UPDATE {SCHEMA}.organisation_wallets w SET
                balance = v.balance, held = v.held, low_balance = v.low_balance,
                depleted = v.depleted
            FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bool[], $5::bool[])
                AS v(wallet_id, balance, held, low_balance, depleted)
            WHERE w.wallet_id = v.wallet_id""",
        [w.wallet_id for w in wallets], [w.balance for w in wallets], [w.held for w in wallets],
        [w.low_balance for w in wallets], [w.depleted for w in wallets])


async def save_batch(conn: asyncpg.Connection, wallets: Sequence[Wallet],
                     new_holds: Sequence[Hold], changed_holds: Sequence[Hold],
                     messages: Sequence[Outgoing]) -> Queued:
    """A batch's wallet balances, new and changed holds and outbox messages in one
    statement (one round trip); ledger rows go first, by `append_entries`. Returns the
    outbox rows with their ids, for the relay (None if they went by COPY)."""
    if len(messages) >= COPY_THRESHOLD:
        copied = await enqueue(conn, SCHEMA, messages)
        await save_batch(conn, wallets, new_holds, changed_holds, ())
        return copied
    if not (wallets or new_holds or changed_holds or messages):
        return []
    w, n, c, m = wallets, new_holds, changed_holds, messages
    rows = await conn.fetch(
        f"""WITH saved AS (
                UPDATE {SCHEMA}.organisation_wallets w SET
                    balance = v.balance, held = v.held, low_balance = v.low_balance,
                    depleted = v.depleted
                FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bool[], $5::bool[])
                    AS v(wallet_id, balance, held, low_balance, depleted)
                WHERE w.wallet_id = v.wallet_id
            ), held AS (
                INSERT INTO {SCHEMA}.holds ({_HOLD_COLUMNS})
                SELECT * FROM unnest($6::uuid[], $7::uuid[], $8::uuid[], $9::uuid[], $10::text[],
                    $11::bigint[], $12::bigint[], $13::text[], $14::timestamptz[],
                    $15::timestamptz[], $16::timestamptz[])
            ), changed AS (
                UPDATE {SCHEMA}.holds h SET remaining = v.remaining, status = v.status,
                    closed_at = v.closed_at
                FROM unnest($17::uuid[], $18::bigint[], $19::text[], $20::timestamptz[])
                    AS v(hold_id, remaining, status, closed_at)
                WHERE h.hold_id = v.hold_id
            ), queued AS (
                INSERT INTO {SCHEMA}.outbox (topic, key, value, partition)
                SELECT * FROM unnest($21::text[], $22::bytea[], $23::bytea[], $24::int[])
                RETURNING id
            )
            SELECT id FROM queued""",
        [x.wallet_id for x in w], [x.balance for x in w], [x.held for x in w],
        [x.low_balance for x in w], [x.depleted for x in w],
        [h.hold_id for h in n], [h.request_id for h in n], [h.wallet_id for h in n],
        [h.vm_id for h in n], [h.purpose for h in n], [h.amount for h in n],
        [h.remaining for h in n], [h.status.value for h in n], [h.created_at for h in n],
        [h.expires_at for h in n], [h.closed_at for h in n],
        [h.hold_id for h in c], [h.remaining for h in c], [h.status.value for h in c],
        [h.closed_at for h in c],
        [x.topic for x in m], [x.key for x in m], [x.value for x in m], [x.partition for x in m])
    return queued([r["id"] for r in rows], m)


ENTRY_COLUMNS = ["wallet_id", "kind", "amount", "balance_after", "hold_drawn",
                  "idempotency_key", "vm_id", "refunds_entry_id", "description", "occurred_at",
                  "vm_ids", "line_ids", "vm_amounts"]


def _entry_row(e: LedgerEntry) -> tuple[object, ...]:
    p = e.parts
    return (e.wallet_id, e.kind.value, e.amount, e.balance_after, e.hold_drawn,
            e.idempotency_key, e.vm_id, e.refunds_entry_id, e.description, e.occurred_at,
            None if p is None else p.vm_ids, None if p is None else p.line_ids,
            None if p is None else p.amounts)


async def append_entries(conn: asyncpg.Connection, entries: Sequence[LedgerEntry]) -> None:
    """Append ledger rows without reading their ids back: COPY for a batch, which costs a
    third of a multi-row INSERT per row."""
    if len(entries) < 64:
        await insert_entries(conn, entries)
        return
    await conn.copy_records_to_table(
        "wallet_transactions", schema_name=SCHEMA, columns=ENTRY_COLUMNS,
        records=[_entry_row(e) for e in entries])


async def insert_entries(conn: asyncpg.Connection, entries: Sequence[LedgerEntry]) -> list[int]:
    """Append ledger rows, returning their ids. The VM parts go as one JSON document per
    call (arrays of arrays of different lengths cannot be parameters)."""
    if not entries:
        return []
    rows = await conn.fetch(
        f"""INSERT INTO {SCHEMA}.wallet_transactions (wallet_id, kind, amount, balance_after,
                hold_drawn, idempotency_key, vm_id, refunds_entry_id, description, occurred_at,
                vm_ids, line_ids, vm_amounts)
            SELECT e.wallet_id, e.kind, e.amount, e.balance_after, e.hold_drawn,
                   e.idempotency_key, e.vm_id, e.refunds_entry_id, e.description,
                   e.occurred_at,
                   (SELECT array_agg(v::uuid ORDER BY i) FROM jsonb_array_elements_text(
                       $11::jsonb -> (e.n::int - 1) -> 0) WITH ORDINALITY AS x(v, i)),
                   (SELECT array_agg(v::uuid ORDER BY i) FROM jsonb_array_elements_text(
                       $11::jsonb -> (e.n::int - 1) -> 1) WITH ORDINALITY AS x(v, i)),
                   (SELECT array_agg(v::bigint ORDER BY i) FROM jsonb_array_elements_text(
                       $11::jsonb -> (e.n::int - 1) -> 2) WITH ORDINALITY AS x(v, i))
            FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
                $6::text[], $7::uuid[], $8::bigint[], $9::text[], $10::timestamptz[])
                WITH ORDINALITY AS e(wallet_id, kind, amount, balance_after, hold_drawn,
                    idempotency_key, vm_id, refunds_entry_id, description, occurred_at, n)
            ORDER BY e.n
            RETURNING entry_id""",
        [e.wallet_id for e in entries], [e.kind.value for e in entries],
        [e.amount for e in entries], [e.balance_after for e in entries],
        [e.hold_drawn for e in entries], [e.idempotency_key for e in entries],
        [e.vm_id for e in entries], [e.refunds_entry_id for e in entries],
        [e.description for e in entries], [e.occurred_at for e in entries],
        # no parts: empty lists, which aggregate to NULL
        json.dumps([[[], [], []] if e.parts is None else
                    [[str(v) for v in e.parts.vm_ids], [str(v) for v in e.parts.line_ids],
                     list(e.parts.amounts)] for e in entries]))
    return [r["entry_id"] for r in rows]


async def booked_charges(conn: asyncpg.Connection, keys: Sequence[tuple[UUID, str]]
                         ) -> dict[tuple[UUID, str], tuple[int, str]]:
    """Which of these (wallet, idempotency key) pairs the ledger holds, each with what it
    booked: the amount (unsigned) and the description."""
    if not keys:
        return {}
    rows = await conn.fetch(
        f"""SELECT t.wallet_id, t.idempotency_key, abs(t.amount) AS amount, t.description
            FROM {SCHEMA}.wallet_transactions t
            JOIN unnest($1::uuid[], $2::text[]) AS k(wallet_id, idempotency_key)
            USING (wallet_id, idempotency_key)""",
        [w for w, _ in keys], [k for _, k in keys])
    return {(r["wallet_id"], r["idempotency_key"]): (r["amount"], r["description"])
            for r in rows}


async def booked_entry(conn: asyncpg.Connection, wallet_id: UUID, key: str
                       ) -> asyncpg.Record | None:
    """The ledger row booked under this idempotency key, if any (entry id, amount, the
    entry it refunds and its VM)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""SELECT entry_id, amount, refunds_entry_id, vm_id FROM {SCHEMA}.wallet_transactions
            WHERE wallet_id = $1 AND idempotency_key = $2""", wallet_id, key)
    return row


async def create_organisation_wallet(conn: asyncpg.Connection, *, organisation_id: UUID,
                                     name: str, kind: str, reseller_id: UUID | None,
                                     wallet: Wallet) -> None:
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.organisations (organisation_id, name, kind, reseller_id)
            VALUES ($1, $2, $3, $4)""", organisation_id, name, kind, reseller_id)
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.organisation_wallets (wallet_id, organisation_id, currency,
                billing_mode, credit_limit, low_balance_threshold)
            VALUES ($1, $2, $3, $4, $5, $6)""",
        wallet.wallet_id, organisation_id, wallet.currency, wallet.billing_mode.value,
        wallet.credit_limit, wallet.low_balance_threshold)


async def organisation_kind(conn: asyncpg.Connection, organisation_id: UUID) -> str | None:
    kind: str | None = await conn.fetchval(
        f"SELECT kind FROM {SCHEMA}.organisations WHERE organisation_id = $1", organisation_id)
    return kind


async def organisation_name(conn: asyncpg.Connection, organisation_id: UUID) -> str | None:
    name: str | None = await conn.fetchval(
        f"SELECT name FROM {SCHEMA}.organisations WHERE organisation_id = $1", organisation_id)
    return name


async def wallet_of_organisation(conn: asyncpg.Connection, organisation_id: UUID) -> UUID | None:
    wallet_id: UUID | None = await conn.fetchval(
        f"SELECT wallet_id FROM {SCHEMA}.organisation_wallets WHERE organisation_id = $1",
        organisation_id)
    return wallet_id


async def set_status(conn: asyncpg.Connection, wallet_id: UUID, suspended: bool) -> None:
    await conn.execute(
        f"UPDATE {SCHEMA}.organisation_wallets SET status = $2 WHERE wallet_id = $1",
        wallet_id, "suspended" if suspended else "active")


async def set_auto_topup(conn: asyncpg.Connection, wallet_id: UUID, auto: AutoTopUp | None) -> None:
    await conn.execute(
        f"""UPDATE {SCHEMA}.organisation_wallets SET auto_topup_threshold = $2,
                auto_topup_amount = $3, auto_topup_card_token = $4 WHERE wallet_id = $1""",
        wallet_id, auto.threshold if auto else None, auto.amount if auto else None,
        auto.card_token if auto else None)


async def usage_last_24h(conn: asyncpg.Connection, wallet_id: UUID) -> int:
    """Usage booked in the 24 hours (event time) up to the latest usage debit."""
    total: int = await conn.fetchval(
        f"""WITH latest AS (
                SELECT max(occurred_at) AS at FROM {SCHEMA}.wallet_transactions
                WHERE wallet_id = $1 AND kind = 'usage_debit')
            SELECT coalesce(sum(-t.amount), 0) FROM {SCHEMA}.wallet_transactions t, latest
            WHERE t.wallet_id = $1 AND t.kind = 'usage_debit'
              AND t.occurred_at > latest.at - interval '24 hours'""",
        wallet_id)
    return int(total)


async def balance_before(conn: asyncpg.Connection, wallet_id: UUID, at: datetime) -> int:
    """The balance from the entries dated before `at`: today's balance less what came since
    (the balance is the ledger's sum, kept in the same transactions), so a statement of a
    recent month reads that month's entries, not the wallet's whole history."""
    total = await conn.fetchval(
        f"""SELECT w.balance - coalesce((
                    SELECT sum(t.amount) FROM {SCHEMA}.wallet_transactions t
                    WHERE t.wallet_id = $1 AND t.occurred_at >= $2), 0)
            FROM {SCHEMA}.organisation_wallets w WHERE w.wallet_id = $1""", wallet_id, at)
    return int(total or 0)


async def entries_between(conn: asyncpg.Connection, wallet_id: UUID, start: datetime,
                          end: datetime) -> list[asyncpg.Record]:
    return list(await conn.fetch(
        f"""SELECT entry_id, kind, amount, balance_after, hold_drawn, vm_id, refunds_entry_id,
                description, occurred_at, recorded_at, vm_ids, line_ids, vm_amounts,
                idempotency_key
            FROM {SCHEMA}.wallet_transactions
            WHERE wallet_id = $1 AND occurred_at >= $2 AND occurred_at < $3
            ORDER BY occurred_at, entry_id""", wallet_id, start, end))


def _hour_entry(row: asyncpg.Record) -> HourEntry:
    if row["vm_ids"] is not None:
        parts = dict(zip(row["vm_ids"], row["vm_amounts"], strict=True))
    elif row["vm_id"] is not None:  # booked per line: one VM, all of it
        parts = {row["vm_id"]: abs(row["amount"])}
    else:
        parts = {}
    return HourEntry(row["entry_id"], row["kind"] == "usage_debit", abs(row["amount"]), parts)


async def refundable(conn: asyncpg.Connection, wallet_id: UUID, entry_id: int
                     ) -> Refundable | None:
    """What a refund of this entry depends on; read under the caller's wallet lock. A usage
    debit's hour is every usage row of the wallet at its time (usage rows are booked at the
    start of the hour they charge)."""
    charge = await conn.fetchrow(
        f"""SELECT entry_id, kind, amount, occurred_at FROM {SCHEMA}.wallet_transactions
            WHERE wallet_id = $1 AND entry_id = $2""", wallet_id, entry_id)
    if charge is None:
        return None
    hour = None
    refunded = [entry_id]
    if charge["kind"] == "usage_debit":
        rows = await conn.fetch(
            f"""SELECT entry_id, kind, amount, vm_id, vm_ids, vm_amounts
                FROM {SCHEMA}.wallet_transactions
                WHERE wallet_id = $1 AND occurred_at = $2
                  AND kind IN ('usage_debit', 'usage_credit')""",
            wallet_id, charge["occurred_at"])
        hour = [_hour_entry(r) for r in rows]
        refunded = [e.entry_id for e in hour if e.debit]
    refunds = await conn.fetch(
        f"""SELECT refunds_entry_id, vm_id, amount FROM {SCHEMA}.wallet_transactions
            WHERE refunds_entry_id = ANY($1::bigint[])""", refunded)
    return Refundable(entry_id, charge["amount"], hour,
                      [PastRefund(r["refunds_entry_id"], r["vm_id"], r["amount"])
                       for r in refunds])


async def reconciliation(conn: asyncpg.Connection, wallet_id: UUID
                         ) -> tuple[int, int, int, int] | None:
    """(balance, sum of the ledger, held, sum of open holds), read in one statement so all
    four come from one snapshot while debits keep arriving."""
    row = await conn.fetchrow(
        f"""SELECT w.balance, w.held,
              (SELECT coalesce(sum(amount), 0) FROM {SCHEMA}.wallet_transactions
                 WHERE wallet_id = $1) AS ledger,
              (SELECT coalesce(sum(remaining), 0) FROM {SCHEMA}.holds
                 WHERE wallet_id = $1 AND status IN ('pending', 'active')) AS holds
            FROM {SCHEMA}.organisation_wallets w WHERE w.wallet_id = $1""",
        wallet_id)
    if row is None:
        return None
    return row["balance"], int(row["ledger"]), row["held"], int(row["holds"])


# What an operator's list of wallets may be narrowed to (SQL over organisation_wallets w).
WALLET_FILTERS = {
    "all": "true",
    "low_balance": "w.low_balance AND NOT w.depleted",
    "depleted": "w.depleted",
    # Invoice customers that have used 80% or more of their credit limit.
    "near_credit_limit": """w.billing_mode = 'INVOICE' AND w.credit_limit > 0
        AND (greatest(-w.balance, 0) + w.held) * 100 >= w.credit_limit * 80""",
    "suspended": "w.status = 'suspended'",
}


async def list_wallets(conn: asyncpg.Connection, state: str, limit: int
                       ) -> list[tuple[str, str, Wallet]]:
    """(organisation name, kind, wallet) for the operator's list, by name."""
    rows = await conn.fetch(
        f"""SELECT o.name, o.kind, {_WALLET_COLUMNS}
            FROM {SCHEMA}.organisation_wallets w
            JOIN {SCHEMA}.organisations o USING (organisation_id)
            WHERE {WALLET_FILTERS[state]} ORDER BY o.name, w.wallet_id LIMIT $1""", limit)
    return [(r["name"], r["kind"], _wallet(r)) for r in rows]
