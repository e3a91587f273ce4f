"""Thin handlers: usage and wallet events in, domain decisions, lines and events out.

metering.usage: each batch rates its usage into billing lines in one transaction, groups
their debits and credits into one wallet entry per wallet, hour, revision and kind, and sends
those to the wallet (straight after the commit: see `_bill`). Its
watermarks close months (services/billing/month_closing.py).

wallet.events: confirms the entries the wallet booked, mirrors top-ups and refunds for the
statements, closes months whose debits are now all confirmed, and turns low-balance events
of wallets with auto top-up into one gateway charge each (services/billing/auto_topup.py).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import structlog
from aiokafka.partitioner import murmur2
from pydantic import TypeAdapter

from services.billing import repository as repo
from services.billing.auto_topup import AutoTopUps, attempt_for
from services.billing.domain import (
    Attempt,
    Biller,
    Line,
    Rater,
    UsageEntry,
    UsageReused,
    booked_month,
    line_id,
    low_watermark,
    month_of,
    usage_entries,
)
from services.billing.gateway import (
    PaymentGateway,
)
from services.billing.month_closing import MonthClosing
from shared.consumer import Incoming, Records, dead_letter, dead_letters, parse_records
from shared.contracts.base import deterministic_id
from shared.contracts.metering import HourlyUsage, UsageStreamItem
from shared.contracts.wallet import (
    MAX_CHARGES_PER_MESSAGE,
    MAX_VM_PARTS_PER_MESSAGE,
    ChargeUsage,
    DebitsApplied,
    WalletEvent,
    WalletLowBalance,
    WalletOpened,
    WalletRefunded,
    WalletToppedUp,
)
from shared.outbox import Outgoing, Row, enqueue, outgoing
from shared.pricing import RateCardBook
from shared.runtime import ServiceRuntime
from shared.topics import (
    BILLING_DEBITS,
    METERING_USAGE,
    VCENTER_EVENTS,
)

log = structlog.get_logger(__name__)

CONSUMER = "billing"
USAGE: TypeAdapter[Any] = TypeAdapter(UsageStreamItem)
WALLET_EVENTS: TypeAdapter[Any] = TypeAdapter(WalletEvent)


SAME_PARTITIONING = BILLING_DEBITS.partitions == METERING_USAGE.partitions


@functools.lru_cache(maxsize=100_000)
def usage_partition_of(wallet_id: UUID) -> int:
    """The metering.usage partition of a wallet's usage: Kafka's default partitioner
    (murmur2 of the key) over the same key metering uses, the wallet id."""
    return (murmur2(str(wallet_id).encode()) & 0x7FFFFFFF) % METERING_USAGE.partitions


def entries_message_id(entries: Sequence[UsageEntry]) -> UUID:
    """A ChargeUsage's id, from every entry it carries: the same entries, the same id."""
    digest = hashlib.sha1(b"".join(e.entry_id.bytes for e in entries)).hexdigest()
    return deterministic_id("billing.charges", digest)


class WalletCharges:
    """A usage batch's wallet entries, one `ChargeUsage` per wallet (and currency), in the
    order `usage_entries` gives: one message per wallet and batch, one entry per wallet,
    hour, revision and kind, where a debit per line would cost a parse, an envelope, a
    record and a ledger row apiece."""

    def __init__(self, causes: dict[UUID, Incoming[HourlyUsage]]) -> None:
        self._causes = causes  # per wallet: its first usage in the batch (the messages' cause)
        self._by_wallet: dict[tuple[UUID, str], list[UsageEntry]] = {}

    def add(self, entry: UsageEntry) -> None:
        self._by_wallet.setdefault((entry.wallet_id, entry.currency), []).append(entry)

    def rows(self, topic: str) -> list[Row]:
        rows = []
        for (wallet_id, currency), entries in self._by_wallet.items():
            first = self._causes[wallet_id]
            cause = first.message
            # Same key, same partition count: the partition the wallet's key hashes to,
            # the one its usage came from.
            partition = first.record.partition if SAME_PARTITIONING else None
            for chunk in _chunks(entries):
                message = cause.caused(
                    ChargeUsage, event_id=entries_message_id(chunk),
                    occurred_at=cause.occurred_at, wallet_id=wallet_id, currency=currency,
                    entries=[{"entry_id": e.entry_id, "kind": e.kind, "hour_start": e.hour_start,
                              "revision": e.revision, "amount_minor": e.amount,
                              "vm_ids": e.vm_ids, "line_ids": e.line_ids,
                              "vm_amounts": e.amounts} for e in chunk])
                rows.append(outgoing(topic, wallet_id, message, partition=partition).row)
        return rows


def _chunks(entries: list[UsageEntry]) -> list[list[UsageEntry]]:
    """Consecutive runs of entries within one message's bounds (entries and VM parts)."""
    chunks: list[list[UsageEntry]] = [[]]
    parts = 0
    for entry in entries:
        if chunks[-1] and (len(chunks[-1]) >= MAX_CHARGES_PER_MESSAGE
                           or parts + len(entry.vm_ids) > MAX_VM_PARTS_PER_MESSAGE):
            chunks.append([])
            parts = 0
        chunks[-1].append(entry)
        parts += len(entry.vm_ids)
    return chunks


class BillingHandlers:
    def __init__(self, runtime: ServiceRuntime, book: RateCardBook, gateway: PaymentGateway,
                 close_grace: timedelta, gateway_timeout_s: float) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.book = book
        self.rater = Rater(book)
        self.debits_topic = self.settings.topic(BILLING_DEBITS.name)
        self.months = MonthClosing(self.settings, close_grace)
        self.topups = AutoTopUps(runtime, gateway, gateway_timeout_s)

    @property
    def pool(self) -> asyncpg.Pool:
        return self.runtime.pool

    # --- metering.usage ---------------------------------------------------------------------

    async def on_usage(self, records: Records) -> None:
        good, bad = parse_records(records, USAGE)
        out = dead_letters(self.settings, CONSUMER, bad)
        usages: list[Incoming[HourlyUsage]] = []
        marks: dict[tuple[int, int], datetime] = {}
        for item in good:
            m = item.message
            if isinstance(m, HourlyUsage):
                usages.append(item)
            elif m.source_partition >= VCENTER_EVENTS.partitions:
                out.append(dead_letter(self.settings, CONSUMER, item.record,
                                       f"watermark from unknown source partition "
                                       f"{m.source_partition}"))
            else:
                key = (item.record.partition, m.source_partition)
                marks[key] = max(marks.get(key, m.up_to), m.up_to)
        charges: list[Row] = []
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                if usages:
                    charges = await self._bill(conn, usages, out)
                if marks:
                    await repo.raise_watermarks(conn, marks)
                    out += await self.months.advance(conn, sorted({p for p, _ in marks}))
                await enqueue(conn, repo.SCHEMA, out)
        if charges:
            await asyncio.gather(*await self.runtime.relay.sender.send(charges))

    async def _bill(self, conn: asyncpg.Connection, usages: list[Incoming[HourlyUsage]],
                    out: list[Outgoing]) -> list[Row]:
        """Bill the usage; dead letters go to `out`, and the charges (the batch's wallet
        entries for `billing.debits`) are returned, to be published once the transaction
        commits.

        Charges skip the outbox: they are the bulk of billing's output, and the lines and
        entries are their durable record. The handler waits for Kafka before it returns, so
        the batch's offsets are committed only after its charges are on Kafka; if anything
        stops in between, the batch comes again, and a usage already billed re-sends the
        stored entry its line is in (same id and lines: the wallet books it once)."""
        partitions = sorted({i.record.partition for i in usages})
        closed = await repo.lock_usage_partitions(conn, partitions)
        hour_keys = list(dict.fromkeys((i.message.vm_id, i.message.hour_start) for i in usages))
        month_keys = list(dict.fromkeys((vm, month_of(at)) for vm, at in hour_keys))
        hours = await repo.hour_states(conn, hour_keys)
        months = await repo.vm_months(conn, month_keys)
        revised = [k for k in dict.fromkeys(
            (i.message.vm_id, month_of(i.message.hour_start)) for i in usages
            if i.message.revision > 0) if k in months]
        for key, cap in (await repo.others_caps(conn, revised, hour_keys)).items():
            months[key].others_cap = cap
        currencies = await repo.wallet_currencies(
            conn, list(dict.fromkeys(i.message.wallet_id for i in usages)))
        biller = Biller(self.book, hours, months, closed, self.rater, currencies=currencies)
        issues: list[tuple[str, UUID, date | None, str]] = []
        # Per usage, in order: its new line, or None for a usage billed before.
        billed: list[tuple[Incoming[HourlyUsage], Line | None]] = []
        for item in usages:
            m = item.message
            try:
                billed.append((item, biller.apply(m, item.record.partition)))
            except UsageReused as error:
                out.append(dead_letter(self.settings, CONSUMER, item.record, str(error)))
            except ValueError as error:  # RatingError, or a currency the book cannot price
                reason = f"usage {m.usage_id} not billed: {error}"
                out.append(dead_letter(self.settings, CONSUMER, item.record, reason))
                month = booked_month(month_of(m.hour_start), closed.get(item.record.partition))
                issues.append((f"usage:{m.vm_id}:{m.hour_start.isoformat()}:{m.revision}",
                               m.wallet_id, month,
                               f"vm {m.vm_id} hour {m.hour_start.isoformat()} revision "
                               f"{m.revision}: metered {m.seconds} s, not billed ({error})"))
        lines = biller.lines
        # A usage billed before re-sends the entry its line is in (same id: the wallet
        # books it once), where that usage comes in the batch.
        repeats = [line_id(i.message.vm_id, i.message.hour_start, i.message.revision)
                   for i, line in billed if line is None]
        stored = await repo.stored_entries(conn, repeats)
        in_order: list[Line | UsageEntry] = []
        for item, line in billed:
            if line is not None:
                in_order.append(line)
                continue
            entry = stored.get(line_id(item.message.vm_id, item.message.hour_start,
                                       item.message.revision))
            if entry is not None:
                in_order.append(entry)
        ordered, new = usage_entries(in_order)
        await repo.insert_lines(conn, lines, new)
        await repo.insert_usage_entries(conn, new)
        touched = {(x.usage.vm_id, x.month) for x in lines if not x.stale}
        await repo.save_vm_months(conn, [biller.vm_months[k] for k in touched])
        await repo.insert_issues(conn, issues)
        causes: dict[UUID, Incoming[HourlyUsage]] = {}
        for item, _ in billed:
            causes.setdefault(item.message.wallet_id, item)
        charges = WalletCharges(causes)
        for entry in ordered:
            charges.add(entry)
        return charges.rows(self.debits_topic)

    # --- wallet.events ----------------------------------------------------------------------

    async def on_wallet_events(self, records: Records) -> None:
        good, bad = parse_records(records, WALLET_EVENTS)
        out = dead_letters(self.settings, CONSUMER, bad)
        attempts: list[Attempt] = []
        # No inbox here: every effect is idempotent by its own key (wallet, movement key,
        # line id, issue key, attempt id), and a redelivery replays the events in order, so the
        # last balance seen ends where it was. Most of these events are debits applied, one per
        # wallet and wallet batch: an inbox row each would cost more than the work.
        async with self.pool.acquire() as conn, conn.transaction():
            if good:
                partitions = sorted({usage_partition_of(i.message.wallet_id) for i in good})
                state = await repo.lock_partitions(conn, partitions)
                lows = {p: low_watermark(marks, VCENTER_EVENTS.partitions)
                        for p, (_, marks) in state.items()}
                attempts = await self._mirror(conn, [i.message for i in good], lows)
                out += await self.months.close_ready(conn, partitions, lows)
            await enqueue(conn, repo.SCHEMA, out)
        if attempts:
            await self.topups.charge(attempts)

    async def _mirror(self, conn: asyncpg.Connection, events: list[Any],
                      lows: dict[int, datetime | None]) -> list[Attempt]:
        opened: list[tuple[Any, ...]] = []
        movements: list[tuple[Any, ...]] = []
        balances: dict[UUID, int] = {}
        applied: list[DebitsApplied] = []
        candidates: list[Attempt] = []
        for m in events:
            partition = usage_partition_of(m.wallet_id)
            low = lows.get(partition)
            # The month open in event time, by this partition's watermarks (None: no month
            # open yet; the wallet's first close takes it).
            open_month = month_of(low) if low is not None else None
            match m:
                case WalletOpened():
                    opened.append((m.wallet_id, m.organisation_id, m.organisation_name,
                                   m.currency, m.billing_mode, partition, m.occurred_at))
                case WalletToppedUp():
                    movements.append((m.wallet_id, f"top_up:{m.payment_id}", "top_up",
                                      m.amount.amount_minor, open_month, partition))
                    balances[m.wallet_id] = m.balance_after.amount_minor
                case WalletRefunded():
                    movements.append((m.wallet_id, f"refund:{m.refund_id}", "refund",
                                      m.amount.amount_minor, open_month, partition))
                    balances[m.wallet_id] = m.balance_after.amount_minor
                case DebitsApplied():
                    applied.append(m)
                    balances[m.wallet_id] = m.balance_after.amount_minor
                case WalletLowBalance(auto_topup=auto) if auto is not None:
                    candidates.append(attempt_for(m, auto))
        await repo.upsert_wallets(conn, opened)
        await repo.insert_movements(conn, movements)
        await repo.set_last_balances(conn, balances)
        await self._confirm(conn, applied)
        recorded = await repo.record_attempts(conn, candidates)
        return [a for a in candidates if a.attempt_id in recorded]

    async def _confirm(self, conn: asyncpg.Connection, applied: list[DebitsApplied]) -> None:
        """Mark the wallet's booked entries confirmed; any amount that differs from billing's
        entries becomes an issue on the wallet's next statement."""
        sums = await repo.confirm_entries(conn, [(m.debit_ids, m.credit_ids) for m in applied])
        issues: list[tuple[str, UUID, date | None, str]] = []
        for m, found in zip(applied, sums, strict=True):
            if found.unknown:
                issues.append((f"unknown:{m.event_id}", m.wallet_id, None,
                               f"wallet booked {found.unknown} debits/credits billing has no "
                               f"entry for (first: {found.first_unknown})"))
            if (found.debited, found.credited) != (m.debited.amount_minor,
                                                   m.credited.amount_minor):
                issues.append((f"amounts:{m.event_id}", m.wallet_id, None,
                               f"wallet debited {m.debited.amount_minor} and credited "
                               f"{m.credited.amount_minor} for entries of {found.debited} and "
                               f"{found.credited} (event {m.event_id})"))
        await repo.insert_issues(conn, issues)

    # --- auto top-up (services/billing/auto_topup.py) ----------------------------------------

    async def settle_pending_attempts(self, older_than: timedelta) -> int:
        return await self.topups.settle_pending_attempts(older_than)
