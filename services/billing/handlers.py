"""Thin handlers: usage and wallet events in, domain decisions, lines and events out.

metering.usage: each batch rates its usage into billing lines in one transaction, groups
their debits and credits into one wallet entry per wallet, hour, revision and kind, and sends
those to the wallet (straight after the commit: see `_bill`). Its
watermarks close months.

wallet.events: confirms the lines the wallet booked, mirrors top-ups and refunds for the
statements, closes months whose debits are now all confirmed, and turns low-balance events
of wallets with auto top-up into one gateway charge each.
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
from prometheus_client import Gauge
from pydantic import TypeAdapter

from services.billing import repository as repo
from services.billing.domain import (
    Attempt,
    Biller,
    Line,
    MonthInput,
    Rater,
    Statement,
    UsageEntry,
    VmBooked,
    VmHours,
    booked_month,
    close_month,
    customer_account,
    document_number,
    invoice_lines,
    last_complete_month,
    line_id,
    low_watermark,
    month_end,
    month_label,
    month_of,
    months_to_close,
    ready_to_close,
    usage_entries,
)
from services.billing.domain import (
    Invoice as InvoiceDoc,
)
from services.billing.gateway import (
    ChargeOutcome,
    Declined,
    PaymentGateway,
    Succeeded,
    TimedOut,
    charge_within,
)
from shared.consumer import Incoming, Records, dead_letter, dead_letters, parse_records
from shared.contracts.base import deterministic_id
from shared.contracts.billing import (
    AutoTopUpDeclined,
    InvoiceIssued,
    MonthClosed,
    VmMonthSummary,
)
from shared.contracts.metering import HourlyUsage, UsageStreamItem
from shared.contracts.wallet import (
    MAX_CHARGES_PER_MESSAGE,
    MAX_VM_PARTS_PER_MESSAGE,
    AutoTopUpSettings,
    ChargeUsage,
    DebitsApplied,
    TopUpWallet,
    WalletEvent,
    WalletLowBalance,
    WalletOpened,
    WalletRefunded,
    WalletToppedUp,
)
from shared.money import MoneyModel
from shared.outbox import Outgoing, Row, enqueue, outgoing
from shared.pricing import RateCardBook
from shared.runtime import ServiceRuntime
from shared.topics import (
    BILLING_DEBITS,
    BILLING_EVENTS,
    METERING_USAGE,
    VCENTER_EVENTS,
    WALLET_TOPUPS,
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


def attempt_id_for(low_balance_event_id: UUID) -> UUID:
    return deterministic_id("billing.auto_topup", low_balance_event_id)


# Auto top-ups left pending longer than this are not settled automatically.
SETTLE_ATTEMPTS_WITHIN = timedelta(hours=1)
ABANDONED_ATTEMPTS = Gauge("cloudwallet_billing_topups_pending_too_long",
                           "Auto top-up attempts pending too long to settle automatically")


def attempt_for(low: WalletLowBalance, auto: AutoTopUpSettings) -> Attempt:
    return Attempt(attempt_id_for(low.event_id), low.wallet_id, auto.amount.to_money(),
                   auto.card_token, low.event_id, low.correlation_id or low.event_id,
                   low.occurred_at)


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
        self.gateway = gateway
        self.close_grace = close_grace
        self.gateway_timeout_s = gateway_timeout_s
        self.debits_topic = self.settings.topic(BILLING_DEBITS.name)

    @property
    def pool(self) -> asyncpg.Pool:
        return self.runtime.pool

    def _out(self, topic: str, key: object, message: Any) -> Outgoing:
        return outgoing(self.settings.topic(topic), key, message)

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
                    out += await self._advance(conn, sorted({p for p, _ in marks}))
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
        biller = Biller(self.book, hours, months, closed, self.rater)
        issues: list[tuple[str, UUID, date | None, str]] = []
        # Per usage, in order: its new line, or None for a usage billed before.
        billed: list[tuple[Incoming[HourlyUsage], Line | None]] = []
        for item in usages:
            m = item.message
            try:
                billed.append((item, biller.apply(m, item.record.partition)))
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

    async def _advance(self, conn: asyncpg.Connection, partitions: Sequence[int]
                       ) -> list[Outgoing]:
        """Open the closes of every month the partitions' low watermarks have passed."""
        state = await repo.lock_partitions(conn, partitions)
        lows: dict[int, datetime | None] = {}
        for partition in partitions:
            closed, marks = state[partition]
            low = lows[partition] = low_watermark(marks, VCENTER_EVENTS.partitions)
            if low is None or (closed is not None and last_complete_month(low) <= closed):
                continue
            first = None if closed else await repo.first_line_month(conn, partition)
            for month in months_to_close(closed, first, low):
                await repo.open_month_closes(conn, partition, month)
            await repo.set_closed_through(conn, partition, last_complete_month(low))
        return await self._close_ready(conn, partitions, lows)

    # --- closing months ---------------------------------------------------------------------

    async def _close_ready(self, conn: asyncpg.Connection, partitions: Sequence[int],
                           lows: dict[int, datetime | None]) -> list[Outgoing]:
        pending, unconfirmed = await repo.pending_closes(conn, partitions)
        closes: list[tuple[UUID, date]] = []
        for partition in partitions:
            mine = [(w, m) for w, m, p in pending if p == partition]
            closes += ready_to_close(mine, unconfirmed, lows.get(partition), self.close_grace)
        if not closes:
            return []
        await repo.assign_unbooked_movements(conn, closes)
        balances = await repo.month_balances(conn, closes)
        hours = await repo.month_hours(conn, closes)
        totals = {(r["wallet_id"], r["month"], r["vm_id"]): r
                  for r in await repo.month_vm_totals(conn, closes)}
        booked: dict[tuple[UUID, date], list[VmBooked]] = {}
        for r in await repo.month_booked(conn, closes):
            booked.setdefault((r["wallet_id"], r["month"]), []).append(VmBooked(
                r["vm_id"], r["hour_month"], int(r["amount"]), int(r["confirmed_amount"]),
                r["item_code"]))
        issues: dict[tuple[UUID, date], list[str]] = {}
        for r in await repo.month_issues(conn, closes):
            issues.setdefault((r["wallet_id"], r["month"]), []).append(r["detail"])
        statements = []
        for key in closes:
            b = balances[key]
            vm_hours = []
            for vm_id, rows in hours.get(key, {}).items():
                total = totals.get((*key, vm_id))
                vm_hours.append(VmHours(
                    vm_id, [h for h, _ in rows], [c for _, c in rows],
                    int(total["cap"]) if total else 0, int(total["charged"]) if total else 0))
            currency = (b["wallet_currency"] or b["line_currency"]
                        or self.settings.default_currency).strip()
            statements.append(close_month(MonthInput(
                wallet_id=key[0], month=key[1], currency=currency, opening=int(b["opening"]),
                charges=int(b["charges"]), usage_credits=int(b["usage_credits"]),
                top_ups=int(b["top_ups"]), refunds=int(b["refunds"]), vm_hours=vm_hours,
                vm_booked=booked.get(key, []), unconfirmed_count=int(b["unconfirmed_count"]),
                unconfirmed_amount=int(b["unconfirmed_amount"]), issues=issues.get(key, []),
                mirror_total=int(b["mirror_total"]),
                last_balance_after=b["last_balance_after"])))
        return await self._publish_closes(conn, statements, balances)

    async def _publish_closes(self, conn: asyncpg.Connection, statements: list[Statement],
                              balances: dict[tuple[UUID, date], asyncpg.Record]
                              ) -> list[Outgoing]:
        invoiced = [(s, balances[(s.wallet_id, s.month)]) for s in statements
                    if balances[(s.wallet_id, s.month)]["billing_mode"] == "INVOICE"
                    and invoice_lines(s)]
        numbers = await repo.next_invoice_numbers(conn, len(invoiced))
        # by wallet and month: a catching-up close takes several months of one wallet
        invoices: dict[tuple[UUID, date], InvoiceDoc] = {}
        for (s, b), number in zip(invoiced, numbers, strict=True):
            invoices[(s.wallet_id, s.month)] = InvoiceDoc(
                document_number(s.month, number), customer_account(b["organisation_id"]),
                s.wallet_id, b["organisation_id"], b["organisation_name"], s.month, s.currency,
                invoice_lines(s))
        out: list[Outgoing] = []
        documents = []
        events = self.settings.topic(BILLING_EVENTS.name)
        for s in statements:
            closed = month_closed_event(s)
            invoice = invoices.get((s.wallet_id, s.month))
            documents.append({**closed.model_dump(mode="json"), "currency": s.currency,
                              "invoice": invoice.document_number if invoice else None})
            out.append(outgoing(events, s.wallet_id, closed))
            if invoice is not None:
                out.append(outgoing(events, s.wallet_id, closed.caused(
                    InvoiceIssued, event_id=deterministic_id("billing.invoice", s.wallet_id,
                                                             month_label(s.month)),
                    wallet_id=s.wallet_id, organisation_id=invoice.organisation_id,
                    document_number=invoice.document_number, month=month_label(s.month),
                    occurred_at=closed.occurred_at,
                    total_incl_vat=MoneyModel(amount_minor=invoice.total,
                                              currency=invoice.currency))))
        await repo.save_closes(conn, statements, documents)
        await repo.save_invoices(conn, [invoice_document(i) for i in invoices.values()])
        log.info("months closed", closes=len(statements), invoices=len(invoices))
        return out

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
                out += await self._close_ready(conn, partitions, lows)
            await enqueue(conn, repo.SCHEMA, out)
        if attempts:
            await self._charge(attempts)

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

    # --- auto top-up ------------------------------------------------------------------------

    async def settle_pending_attempts(self, older_than: timedelta,
                                      younger_than: timedelta = SETTLE_ATTEMPTS_WITHIN) -> int:
        """Ask the gateway again, with the same attempt id (its idempotency key), for the
        attempts left pending: the process stopped after recording the attempt, before or
        after asking the gateway, and before the outcome committed. The card is charged once,
        and the wallet credited once. Older attempts are left to an operator: a top-up that
        late may no longer be wanted (auto top-up turned off, a top-up by hand)."""
        younger_than = max(younger_than, 2 * older_than)  # never an empty window
        async with self.pool.acquire() as conn:
            attempts = await repo.pending_attempts(conn, older_than, younger_than)
            abandoned = await repo.abandoned_attempts(conn, younger_than)
        ABANDONED_ATTEMPTS.set(abandoned)
        if abandoned:
            log.warning("auto top-ups pending too long to settle: an operator must check them "
                        "with the gateway (billing.topup_attempts, status pending)",
                        attempts=abandoned)
        if attempts:
            log.warning("settling auto top-ups left pending", attempts=len(attempts))
            await self._charge(attempts)
        return len(attempts)

    async def _charge(self, attempts: list[Attempt]) -> None:
        """Each attempt was committed as pending before this call: a replay never charges it
        again, and one left pending by a crash is settled by `settle_pending_attempts`."""
        outcomes = await asyncio.gather(*(self._charge_one(attempt) for attempt in attempts))
        messages: dict[UUID, Outgoing] = {}
        decided: list[tuple[UUID, str, str]] = []
        for attempt, outcome in zip(attempts, outcomes, strict=True):
            match outcome:
                case Succeeded(gateway_reference=reference):
                    decided.append((attempt.attempt_id, "succeeded", reference))
                    messages[attempt.attempt_id] = self._out(
                        WALLET_TOPUPS.name, attempt.wallet_id, TopUpWallet(
                            event_id=attempt.attempt_id, payment_id=str(attempt.attempt_id),
                            wallet_id=attempt.wallet_id, amount=MoneyModel.of(attempt.amount),
                            source="auto_topup", correlation_id=attempt.correlation_id,
                            causation_id=attempt.cause_id, occurred_at=attempt.occurred_at))
                    continue
                case Declined(reason=reason):
                    decided.append((attempt.attempt_id, "declined", reason))
                case TimedOut(after_s=after):
                    reason = (f"payment gateway timed out after {after:g} s; outcome unknown, "
                              f"not retried")
                    decided.append((attempt.attempt_id, "timed_out", reason))
            messages[attempt.attempt_id] = self._out(
                BILLING_EVENTS.name, attempt.wallet_id, AutoTopUpDeclined(
                    event_id=deterministic_id("billing.auto_topup_declined", attempt.attempt_id),
                    wallet_id=attempt.wallet_id, attempt_id=attempt.attempt_id, reason=reason,
                    correlation_id=attempt.correlation_id, causation_id=attempt.cause_id,
                    occurred_at=attempt.occurred_at))
        async with self.pool.acquire() as conn, conn.transaction():
            # only outcomes recorded now: another settle may have decided the attempt already
            decided_now = await repo.decide_attempts(conn, decided)
            await enqueue(conn, repo.SCHEMA,
                          [m for i, m in messages.items() if i in decided_now])
        self.runtime.relay.notify()

    async def _charge_one(self, attempt: Attempt) -> ChargeOutcome:
        try:
            return await charge_within(self.gateway, attempt.attempt_id, attempt.card_token,
                                       attempt.amount, self.gateway_timeout_s)
        except Exception as error:  # an adapter bug must not leave the consumer stuck
            log.exception("payment gateway failed", attempt_id=str(attempt.attempt_id))
            return TimedOut(0.0) if isinstance(error, TimeoutError) else Declined(
                f"payment gateway error: {type(error).__name__}")


def month_closed_event(s: Statement) -> MonthClosed:
    def money(amount: int) -> MoneyModel:
        return MoneyModel(amount_minor=amount, currency=s.currency)

    return MonthClosed(
        event_id=deterministic_id("billing.month_closed", s.wallet_id, month_label(s.month)),
        occurred_at=month_end(s.month), wallet_id=s.wallet_id, month=month_label(s.month),
        opening_balance=money(s.opening), charges=money(s.charges), credits=money(s.credits),
        refunds=money(s.refunds), closing_balance=money(s.closing), top_ups=money(s.top_ups),
        vms=[VmMonthSummary(vm_id=v.vm_id, seconds_metered=v.seconds_metered,
                            seconds_billed=v.seconds_billed, amount=money(v.amount),
                            rated=money(v.rated), cap=money(v.cap), debited=money(v.debited))
             for v in s.vms],
        mismatches=s.mismatches, notes=s.notes)


def invoice_document(invoice: InvoiceDoc) -> dict[str, Any]:
    """The stored (and served) form of an invoice: amounts in minor units."""
    return {
        "document_number": invoice.document_number,
        "customer_account": invoice.customer_account,
        "wallet_id": str(invoice.wallet_id),
        "organisation_id": str(invoice.organisation_id),
        "organisation_name": invoice.organisation_name,
        "month": month_label(invoice.month),
        "document_date": invoice.document_date.isoformat(),
        "due_date": invoice.due_date.isoformat(),
        "currency": invoice.currency,
        "vat_rate_percent": 15,
        "lines": [{"line_number": n, "item_code": line.item_code,
                   "description": line.description, "quantity": line.quantity,
                   "unit_price_minor": line.unit_price, "net_minor": line.net,
                   "vat_minor": line.vat, "total_minor": line.total}
                  for n, line in enumerate(invoice.lines, start=1)],
        "net_minor": invoice.net,
        "vat_minor": invoice.vat,
        "total_minor": invoice.total,
    }
