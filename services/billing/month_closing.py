"""Closing months: when the metering watermarks of a wallet's usage partition have passed a
month's end and its entries are confirmed (or the grace has run out), the month is closed per
wallet into a statement, an invoice for invoice customers, and the events that announce
them. Called by the usage and wallet-event handlers inside their transactions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from services.billing import repository as repo
from services.billing.domain import (
    Invoice as InvoiceDoc,
)
from services.billing.domain import (
    MonthInput,
    Statement,
    VmBooked,
    VmHours,
    close_month,
    customer_account,
    document_number,
    invoice_lines,
    last_complete_month,
    low_watermark,
    month_end,
    month_label,
    months_to_close,
    ready_to_close,
)
from shared.contracts.base import deterministic_id
from shared.contracts.billing import InvoiceIssued, MonthClosed, VmMonthSummary
from shared.money import MoneyModel
from shared.outbox import Outgoing, outgoing
from shared.settings import Settings
from shared.topics import BILLING_EVENTS, VCENTER_EVENTS

log = structlog.get_logger(__name__)


class MonthClosing:
    def __init__(self, settings: Settings, close_grace: timedelta) -> None:
        self.settings = settings
        self.close_grace = close_grace

    async def advance(self, conn: asyncpg.Connection, partitions: Sequence[int]
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
        return await self.close_ready(conn, partitions, lows)

    async def close_ready(self, conn: asyncpg.Connection, partitions: Sequence[int],
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
