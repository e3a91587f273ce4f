"""Billing's HTTP API: a wallet's closed monthly statements and invoices, as JSON or CSV, and
its auto top-up attempts with their outcomes.
Readers' keys only; a wallet of an organisation the key may not see is a 404."""

from __future__ import annotations

import csv
import io
import json
from typing import TYPE_CHECKING, Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query, Response

from services.billing import repository as repo
from services.billing.domain import parse_month
from shared.auth import Principal
from shared.http import ReaderKey
from shared.money import MINOR_UNITS

if TYPE_CHECKING:
    from services.billing.app import BillingService

INVOICE_CSV_COLUMNS = (
    "customer_account", "document_type", "document_number", "document_date", "due_date",
    "currency", "line_number", "item_code", "description", "quantity", "unit_price",
    "net_amount", "vat_code", "vat_rate", "vat_amount", "line_total",
)


def major(minor: int, currency: str) -> str:
    """Minor units as a plain decimal (no symbol, no grouping), e.g. 15000 -> '150.00'."""
    units = MINOR_UNITS[currency]
    digits = len(str(units)) - 1
    sign = "-" if minor < 0 else ""
    whole, part = divmod(abs(minor), units)
    return f"{sign}{whole}.{part:0{digits}d}"


def statement_csv(statement: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    currency = statement["currency"]
    writer.writerow(["record", "vm_id", "seconds_metered", "seconds_billed", "rated_minor",
                     "cap_minor", "amount_minor", "debited_minor", "currency", "detail"])
    for field in ("opening_balance", "charges", "credits", "top_ups", "refunds",
                  "closing_balance"):
        value = statement.get(field)
        writer.writerow([field, "", "", "", "", "", value["amount_minor"] if value else 0, "",
                         currency, ""])
    for vm in statement["vms"]:
        writer.writerow(["vm", vm["vm_id"], vm["seconds_metered"], vm["seconds_billed"],
                         (vm.get("rated") or {}).get("amount_minor", ""),
                         (vm.get("cap") or {}).get("amount_minor", ""),
                         vm["amount"]["amount_minor"],
                         (vm.get("debited") or {}).get("amount_minor", ""), currency, ""])
    for text in statement.get("mismatches", []):
        writer.writerow(["mismatch", "", "", "", "", "", "", "", "", text])
    for text in statement.get("notes", []):
        writer.writerow(["note", "", "", "", "", "", "", "", "", text])
    return buffer.getvalue()


def invoice_csv(invoice: dict[str, Any]) -> str:
    """One row per invoice line, the header fields repeated on every row (see
    docs/invoice-export.md)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(INVOICE_CSV_COLUMNS)
    currency = invoice["currency"]
    for line in invoice["lines"]:
        writer.writerow([
            invoice["customer_account"], "INV", invoice["document_number"],
            invoice["document_date"], invoice["due_date"], currency, line["line_number"],
            line["item_code"], line["description"], f"{line['quantity']:.2f}",
            major(line["unit_price_minor"], currency), major(line["net_minor"], currency),
            "S", f"{invoice['vat_rate_percent']:.2f}", major(line["vat_minor"], currency),
            major(line["total_minor"], currency),
        ])
    return buffer.getvalue()


def register_routes(service: BillingService) -> None:
    router = APIRouter(tags=["billing"])

    async def check_visible(wallet_id: UUID, by: Principal) -> None:
        async with service.pool.acquire() as conn:
            owner = await repo.wallet_organisation(conn, wallet_id)
        if owner is None or not by.may_read(owner):
            raise HTTPException(404, f"billing knows no wallet {wallet_id}")

    def month_or_422(label: str) -> Any:
        try:
            return parse_month(label)
        except ValueError as error:
            raise HTTPException(422, str(error)) from None

    @router.get("/wallets/{wallet_id}/statements/{month}")
    async def statement(wallet_id: UUID, month: str, by: ReaderKey,
                        format: Literal["json", "csv"] = "json") -> Response:
        """A closed month's statement: balances, charges, credits, refunds, per-VM hours
        metered and billed, and any mismatch between metered, rated and debited amounts."""
        first_day = month_or_422(month)
        await check_visible(wallet_id, by)
        async with service.pool.acquire() as conn:
            row = await repo.statement(conn, wallet_id, first_day)
            known = row is not None or await repo.wallet_known(conn, wallet_id)
        if not known:
            raise HTTPException(404, f"billing knows no wallet {wallet_id}")
        if row is None:
            raise HTTPException(404, f"{month} is not closed for wallet {wallet_id}: usage up "
                                     "to its end has not all arrived yet")
        if row["status"] != "closed":
            raise HTTPException(404, f"{month} is closing for wallet {wallet_id}: waiting for "
                                     "the wallet to confirm the month's debits")
        document = json.loads(row["statement"])
        if format == "csv":
            return Response(statement_csv(document), media_type="text/csv")
        return Response(json.dumps(document), media_type="application/json")

    @router.get("/wallets/{wallet_id}/invoices/{month}")
    async def invoice(wallet_id: UUID, month: str, by: ReaderKey,
                      format: Literal["json", "csv"] = "json") -> Response:
        """An invoice customer's monthly invoice; CSV in the accounting import layout."""
        first_day = month_or_422(month)
        await check_visible(wallet_id, by)
        async with service.pool.acquire() as conn:
            document = await repo.invoice(conn, wallet_id, first_day)
            close = None if document else await repo.statement(conn, wallet_id, first_day)
        closed = close is not None and close["status"] == "closed"
        if document is None:
            reason = (f"no invoice for wallet {wallet_id} in {month}: "
                      + ("nothing was charged, or it is not an invoice customer" if closed
                         else "the month is not closed"))
            raise HTTPException(404, reason)
        if format == "csv":
            return Response(invoice_csv(document), media_type="text/csv",
                            headers={"Content-Disposition":
                                     f'attachment; filename="{document["document_number"]}.csv"'})
        return Response(json.dumps(document), media_type="application/json")

    @router.get("/wallets/{wallet_id}/auto-topups")
    async def auto_topups(wallet_id: UUID, by: ReaderKey,
                          limit: Annotated[int, Query(ge=1, le=500)] = 50
                          ) -> list[dict[str, Any]]:
        """The wallet's auto top-up attempts, newest first: when, how much, and the outcome
        (pending, succeeded, declined, or timed_out: the gateway's answer is unknown) with
        the gateway's reason for a decline or a timeout."""
        await check_visible(wallet_id, by)
        async with service.pool.acquire() as conn:
            rows = await repo.topup_attempts(conn, wallet_id, limit)
        return [{"attempt_id": str(r["attempt_id"]), "attempted_at": r["created_at"].isoformat(),
                 "decided_at": r["decided_at"].isoformat() if r["decided_at"] else None,
                 "amount_minor": r["amount"], "currency": r["currency"].strip(),
                 "outcome": r["status"],
                 # a success's detail is the gateway's reference, not a reason
                 "reason": "" if r["status"] == "succeeded" else r["detail"]} for r in rows]

    service.http.include_router(router)
