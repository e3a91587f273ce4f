"""Wallet persistence on asyncpg: whole batches in a few multi-row statements."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from services.wallet.domain import (
    AutoTopUp,
    BillingMode,
    Hold,
    HoldStatus,
    LedgerEntry,
    Wallet,
)
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
                         wallet_ids: Iterable[UUID]) -> tuple[set[UUID], dict[UUID, Wallet]]:
    """A batch's inbox claim and the row locks on its wallets in one round trip: the ids not
    seen before, and the wallets (of every message, repeats too: locking one more changes
    nothing), locked in id order so concurrent batches cannot deadlock."""
    rows = await conn.fetch(
        f"""WITH claimed AS (
                INSERT INTO {SCHEMA}.inbox (message_id) SELECT DISTINCT unnest($1::uuid[])
                ON CONFLICT DO NOTHING RETURNING message_id
            ), locked AS (
                -- after the claim (it reads `claimed`), as it was in two statements: a
                -- claim taken after a wallet lock could deadlock with the webhook's top-up
                SELECT {_WALLET_COLUMNS} FROM {SCHEMA}.organisation_wallets w
                WHERE w.wallet_id = ANY($2::uuid[]) AND (SELECT count(*) FROM claimed) >= 0
                ORDER BY w.wallet_id FOR UPDATE
            )
            -- the claimed ids once, on the first row (not repeated on every wallet's)
            SELECT CASE WHEN l.n IS NULL OR l.n = 1
                        THEN (SELECT array_agg(message_id) FROM claimed) END AS fresh, l.*
            FROM (VALUES (1)) AS one(x)
            LEFT JOIN (SELECT locked.*, row_number() OVER () AS n FROM locked) l ON true""",
        list(message_ids), sorted(set(wallet_ids)))
    fresh = set(next((r["fresh"] for r in rows if r["fresh"] is not None), ()))
    return fresh, {r["wallet_id"]: _wallet(r) for r in rows if r["wallet_id"] is not None}


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
    now: datetime | None = await conn.fetchval(f"SELECT now FROM {SCHEMA}.clock WHERE id = 1")
    return now


async def advance_clock(conn: asyncpg.Connection, at: datetime) -> None:
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.clock (id, now) VALUES (1, $1)
            ON CONFLICT (id) DO UPDATE SET now = greatest({SCHEMA}.clock.now, excluded.now)""", at)


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
                  "idempotency_key", "vm_id", "refunds_entry_id", "description", "occurred_at"]


async def append_entries(conn: asyncpg.Connection, entries: Sequence[LedgerEntry]) -> None:
    """Append ledger rows without reading their ids back: COPY for a batch, which costs a
    third of a multi-row INSERT per row."""
    if len(entries) < 64:
        await insert_entries(conn, entries)
        return
    await conn.copy_records_to_table(
        "wallet_transactions", schema_name=SCHEMA, columns=ENTRY_COLUMNS,
        records=[(e.wallet_id, e.kind.value, e.amount, e.balance_after, e.hold_drawn,
                  e.idempotency_key, e.vm_id, e.refunds_entry_id, e.description, e.occurred_at)
                 for e in entries])


async def insert_entries(conn: asyncpg.Connection, entries: Sequence[LedgerEntry]) -> list[int]:
    if not entries:
        return []
    rows = await conn.fetch(
        f"""INSERT INTO {SCHEMA}.wallet_transactions (wallet_id, kind, amount, balance_after,
                hold_drawn, idempotency_key, vm_id, refunds_entry_id, description, occurred_at)
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
                $6::text[], $7::uuid[], $8::bigint[], $9::text[], $10::timestamptz[])
            RETURNING entry_id""",
        [e.wallet_id for e in entries], [e.kind.value for e in entries],
        [e.amount for e in entries], [e.balance_after for e in entries],
        [e.hold_drawn for e in entries], [e.idempotency_key for e in entries],
        [e.vm_id for e in entries], [e.refunds_entry_id for e in entries],
        [e.description for e in entries], [e.occurred_at for e in entries])
    return [r["entry_id"] for r in rows]


async def booked_keys(conn: asyncpg.Connection, keys: Sequence[tuple[UUID, str]]
                      ) -> set[tuple[UUID, str]]:
    """Which of these (wallet, idempotency key) pairs the ledger holds."""
    if not keys:
        return set()
    rows = await conn.fetch(
        f"""SELECT t.wallet_id, t.idempotency_key FROM {SCHEMA}.wallet_transactions t
            JOIN unnest($1::uuid[], $2::text[]) AS k(wallet_id, idempotency_key)
            USING (wallet_id, idempotency_key)""",
        [w for w, _ in keys], [k for _, k in keys])
    return {(r["wallet_id"], r["idempotency_key"]) for r in rows}


async def booked_entry(conn: asyncpg.Connection, wallet_id: UUID, key: str
                       ) -> asyncpg.Record | None:
    """The ledger row booked under this idempotency key, if any (entry id, amount, and the
    entry it refunds)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""SELECT entry_id, amount, refunds_entry_id FROM {SCHEMA}.wallet_transactions
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
    total: int = await conn.fetchval(
        f"""SELECT coalesce(sum(amount), 0) FROM {SCHEMA}.wallet_transactions
            WHERE wallet_id = $1 AND occurred_at < $2""", wallet_id, at)
    return int(total)


async def entries_between(conn: asyncpg.Connection, wallet_id: UUID, start: datetime,
                          end: datetime) -> list[asyncpg.Record]:
    return list(await conn.fetch(
        f"""SELECT entry_id, kind, amount, balance_after, hold_drawn, vm_id, refunds_entry_id,
                description, occurred_at, recorded_at
            FROM {SCHEMA}.wallet_transactions
            WHERE wallet_id = $1 AND occurred_at >= $2 AND occurred_at < $3
            ORDER BY occurred_at, entry_id""", wallet_id, start, end))


@dataclass(frozen=True, slots=True)
class RefundableCharge:
    amount: int  # signed, as booked
    refunded: int  # refunded of this entry so far
    # For a usage debit: what its VM hour still costs (the hour's usage debits less its
    # credits; usage rows share the VM and the hour's start), and what was refunded of all
    # the hour's debits. None for other entries.
    hour_still_charged: int | None
    hour_refunded: int | None


async def refundable_charge(conn: asyncpg.Connection, wallet_id: UUID, entry_id: int
                            ) -> RefundableCharge | None:
    """What a refund of this entry may give back; read under the caller's wallet lock."""
    row = await conn.fetchrow(
        f"""WITH c AS (SELECT * FROM {SCHEMA}.wallet_transactions
                       WHERE wallet_id = $1 AND entry_id = $2),
                 hour AS (SELECT u.entry_id, u.amount, u.kind
                          FROM {SCHEMA}.wallet_transactions u, c
                          WHERE c.kind = 'usage_debit' AND c.vm_id IS NOT NULL
                            AND u.wallet_id = c.wallet_id AND u.occurred_at = c.occurred_at
                            AND u.vm_id = c.vm_id AND u.kind IN ('usage_debit', 'usage_credit'))
            SELECT c.amount, c.kind,
                   coalesce((SELECT sum(r.amount) FROM {SCHEMA}.wallet_transactions r
                             WHERE r.refunds_entry_id = c.entry_id), 0) AS refunded,
                   (SELECT -sum(amount) FROM hour) AS hour_still_charged,
                   (SELECT coalesce(sum(r.amount), 0) FROM {SCHEMA}.wallet_transactions r
                    WHERE r.refunds_entry_id IN (SELECT entry_id FROM hour
                                                 WHERE kind = 'usage_debit')) AS hour_refunded
            FROM c""", wallet_id, entry_id)
    if row is None:
        return None
    still = row["hour_still_charged"]
    return RefundableCharge(row["amount"], int(row["refunded"]),
                            None if still is None else int(still),
                            None if still is None else int(row["hour_refunded"]))


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
