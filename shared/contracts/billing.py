"""Billing's events: month closed (reconciliation), invoices, auto top-up outcomes."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from shared.contracts.base import Envelope
from shared.money import MoneyModel


class VmMonthSummary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    vm_id: UUID
    seconds_metered: int
    seconds_billed: int
    amount: MoneyModel


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
    reason: str


BillingEvent = Annotated[
    MonthClosed | InvoiceIssued | AutoTopUpDeclined, Field(discriminator="type")
]
