"""Billing's events: month closed (reconciliation), invoices, auto top-up outcomes."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from shared.contracts.base import Envelope, StorableText
from shared.money import MoneyModel


class VmMonthSummary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    vm_id: UUID
    seconds_metered: int
    seconds_billed: int
    amount: MoneyModel
    # Added (optional): the month's rated total before the cap, the cap, and how much of
    # `amount` the wallet has confirmed as debited.
    rated: MoneyModel | None = None
    cap: MoneyModel | None = None
    debited: MoneyModel | None = None


class MonthClosed(Envelope):
    type: Literal["billing.month_closed"] = "billing.month_closed"
    version: Literal[1] = 1
    wallet_id: UUID
    month: str = Field(pattern=r"^\d{4}-\d{2}$")
    opening_balance: MoneyModel
    charges: MoneyModel
    credits: MoneyModel
    refunds: MoneyModel
    closing_balance: MoneyModel
    vms: list[VmMonthSummary]
    mismatches: list[str] = Field(default_factory=list)
    # Added (optional): `credits` includes top-ups; this is the top-up part of it.
    top_ups: MoneyModel | None = None
    # Added (optional): facts worth knowing that are not mismatches (e.g. a late
    # correction of an earlier month booked on this statement).
    notes: list[str] = Field(default_factory=list)


class InvoiceIssued(Envelope):
    type: Literal["billing.invoice_issued"] = "billing.invoice_issued"
    version: Literal[1] = 1
    wallet_id: UUID
    organisation_id: UUID
    document_number: str
    month: str
    total_incl_vat: MoneyModel


class AutoTopUpDeclined(Envelope):
    type: Literal["billing.auto_topup_declined"] = "billing.auto_topup_declined"
    version: Literal[1] = 1
    wallet_id: UUID
    attempt_id: UUID
    reason: StorableText


BillingEvent = Annotated[
    MonthClosed | InvoiceIssued | AutoTopUpDeclined, Field(discriminator="type")
]
