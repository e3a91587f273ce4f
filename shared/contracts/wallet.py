"""Contracts of the wallet: reservation requests and decisions, outcomes, debits, top-ups,
and the wallet events others act on."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from shared.contracts.base import Envelope, StorableText, UtcDatetime
from shared.money import MAX_AMOUNT_MINOR, AmountModel, CurrencyCode, MoneyModel

BillingMode = Literal["PAYG", "INVOICE"]
# At most about 300 bytes of JSON each (with an 80-character description): 2,000 charges
# stay well inside Kafka's default 1 MB message, and so does their dead letter.
MAX_CHARGES_PER_MESSAGE = 2_000
# A usage entry's VM parts cost about 90 bytes of JSON each (a VM id, a line id, an amount):
# a `ChargeUsage` carries at most this many over all its entries, about 400 kB.
MAX_VM_PARTS_PER_MESSAGE = 4_000


class RejectionReason(StrEnum):
    INSUFFICIENT_FUNDS = "insufficient_funds"
    UNKNOWN_WALLET = "unknown_wallet"
    CURRENCY_MISMATCH = "currency_mismatch"
    WALLET_SUSPENDED = "wallet_suspended"
    INVALID_AMOUNT = "invalid_amount"


# --- provisioning.requests ---------------------------------------------------------------

class ReserveFunds(Envelope):
    """Ask the wallet to hold `amount` for a provisioning (or resize) request."""

    type: Literal["wallet.reserve_funds"] = "wallet.reserve_funds"
    version: Literal[1] = 1
    request_id: UUID
    wallet_id: UUID
    organisation_id: UUID
    vm_id: UUID
    purpose: Literal["create", "resize"] = "create"
    amount: AmountModel


# --- wallet.decisions ----------------------------------------------------------------------

class FundsReserved(Envelope):
    type: Literal["wallet.funds_reserved"] = "wallet.funds_reserved"
    version: Literal[1] = 1
    request_id: UUID
    wallet_id: UUID
    vm_id: UUID
    hold_id: UUID
    amount: MoneyModel
    available_after: MoneyModel
    expires_at: UtcDatetime


class FundsRejected(Envelope):
    type: Literal["wallet.funds_rejected"] = "wallet.funds_rejected"
    version: Literal[1] = 1
    request_id: UUID
    wallet_id: UUID
    vm_id: UUID
    reason: RejectionReason
    detail: StorableText
    required: MoneyModel
    available: MoneyModel | None = None


WalletDecision = Annotated[FundsReserved | FundsRejected, Field(discriminator="type")]


# --- provisioning.outcomes -----------------------------------------------------------------

class ProvisioningSucceeded(Envelope):
    """The VM exists: its hold stays and is drawn down by usage debits."""

    type: Literal["provisioning.succeeded"] = "provisioning.succeeded"
    version: Literal[1] = 1
    request_id: UUID
    wallet_id: UUID
    vm_id: UUID


class ProvisioningFailed(Envelope):
    """vCenter failed or timed out: the hold is released."""

    type: Literal["provisioning.failed"] = "provisioning.failed"
    version: Literal[1] = 1
    request_id: UUID
    wallet_id: UUID
    vm_id: UUID
    reason: StorableText


class ProvisioningCancelled(Envelope):
    type: Literal["provisioning.cancelled"] = "provisioning.cancelled"
    version: Literal[1] = 1
    request_id: UUID
    wallet_id: UUID
    vm_id: UUID


class VmDecommissioned(Envelope):
    """A VM was deleted: whatever is still held for it returns to the wallet."""

    type: Literal["provisioning.vm_decommissioned"] = "provisioning.vm_decommissioned"
    version: Literal[1] = 1
    wallet_id: UUID
    vm_id: UUID


ProvisioningOutcome = Annotated[
    ProvisioningSucceeded | ProvisioningFailed | ProvisioningCancelled | VmDecommissioned,
    Field(discriminator="type"),
]


# --- billing.debits ------------------------------------------------------------------------

class DebitWallet(Envelope):
    """Rated usage to take from a wallet. `debit_id` is the ledger's idempotency key."""

    type: Literal["billing.debit_wallet"] = "billing.debit_wallet"
    version: Literal[1] = 1
    debit_id: UUID
    wallet_id: UUID
    vm_id: UUID | None = None
    amount: AmountModel  # positive
    period_start: UtcDatetime | None = None
    description: StorableText = Field(default="usage", max_length=200)


class CreditWallet(Envelope):
    """Money back from billing, e.g. a usage correction that lowered a charge."""

    type: Literal["billing.credit_wallet"] = "billing.credit_wallet"
    version: Literal[1] = 1
    credit_id: UUID
    wallet_id: UUID
    vm_id: UUID | None = None
    amount: AmountModel  # positive
    description: StorableText = Field(default="usage correction", max_length=200)


class UsageCharge(BaseModel):
    """One billing line's charge in a `ChargeWallet`: a debit, or a credit from a correction
    that lowered the line. `line_id` is its idempotency key in the ledger (as `debit_id` and
    `credit_id` are for the single messages)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    line_id: UUID
    kind: Literal["debit", "credit"]
    amount_minor: StrictInt = Field(gt=0, le=MAX_AMOUNT_MINOR)
    vm_id: UUID | None = None
    period_start: UtcDatetime  # the charged hour's start; the ledger row's time
    # None: "usage" or "usage correction" (the ledger row names the VM and the hour anyway)
    description: StorableText | None = Field(default=None, max_length=80)


class ChargeWallet(Envelope):
    """Billing's charges for one wallet from one batch of usage, in the order of their lines.
    Each charge is booked once by its line id, whatever message carries it: a charge sent
    again may come in another grouping, so the wallet does not deduplicate by `event_id`
    (derived from the line ids: the same charges, the same id)."""

    type: Literal["billing.charge_wallet"] = "billing.charge_wallet"
    version: Literal[1] = 1
    wallet_id: UUID
    currency: CurrencyCode
    charges: list[UsageCharge] = Field(min_length=1, max_length=MAX_CHARGES_PER_MESSAGE)


class UsageEntry(BaseModel):
    """One wallet entry of usage: a wallet's billing lines of one hour and revision (and
    kind) from one billing batch, as one ledger row. `entry_id` is its idempotency key in
    the ledger (`usage:<entry_id>`). The VM parts are parallel lists, one item per billing
    line: the wallet draws each VM's holds by its part, caps refunds per VM by it, and lists
    the parts on a statement asked for `detail=vm`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entry_id: UUID
    kind: Literal["debit", "credit"]
    hour_start: UtcDatetime  # the charged hour's start; the ledger row's time
    revision: StrictInt = Field(ge=0, le=2**31 - 1)
    amount_minor: StrictInt = Field(gt=0, le=MAX_AMOUNT_MINOR)  # the sum of the parts
    vm_ids: list[UUID] = Field(min_length=1, max_length=MAX_VM_PARTS_PER_MESSAGE)
    line_ids: list[UUID] = Field(min_length=1, max_length=MAX_VM_PARTS_PER_MESSAGE)
    vm_amounts: list[Annotated[StrictInt, Field(gt=0, le=MAX_AMOUNT_MINOR)]] = Field(
        min_length=1, max_length=MAX_VM_PARTS_PER_MESSAGE)

    @model_validator(mode="after")
    def _parts_add_up(self) -> UsageEntry:
        if not len(self.vm_ids) == len(self.line_ids) == len(self.vm_amounts):
            raise ValueError("vm_ids, line_ids and vm_amounts must have one item per VM")
        if len(set(self.vm_ids)) != len(self.vm_ids):
            raise ValueError("a VM appears twice in one usage entry")
        if sum(self.vm_amounts) != self.amount_minor:
            raise ValueError(f"the VM amounts add up to {sum(self.vm_amounts)}, "
                             f"not amount_minor {self.amount_minor}")
        return self


class ChargeUsage(Envelope):
    """Billing's usage entries for one wallet from one batch of usage, in the order of their
    first lines (a correction's entry after the entry it corrects). Each entry is booked once
    by its id, whatever message carries it: billing stores which lines each entry holds, so
    an entry sent again is the same entry, in whatever grouping of messages; the wallet does
    not deduplicate by `event_id` (derived from the entry ids)."""

    type: Literal["billing.charge_usage"] = "billing.charge_usage"
    version: Literal[1] = 1
    wallet_id: UUID
    currency: CurrencyCode
    entries: list[UsageEntry] = Field(min_length=1, max_length=MAX_CHARGES_PER_MESSAGE)

    @model_validator(mode="after")
    def _bounded(self) -> ChargeUsage:
        parts = sum(len(e.vm_ids) for e in self.entries)
        if parts > MAX_VM_PARTS_PER_MESSAGE:
            raise ValueError(f"{parts} VM parts in one message, at most "
                             f"{MAX_VM_PARTS_PER_MESSAGE}")
        return self


# ChargeWallet (one ledger row per line) is still booked, for messages sent before billing
# sent usage entries.
BillingCharge = Annotated[DebitWallet | CreditWallet | ChargeWallet | ChargeUsage,
                          Field(discriminator="type")]


# --- wallet.topups -------------------------------------------------------------------------

class TopUpWallet(Envelope):
    """A settled payment to credit. `payment_id` makes it idempotent."""

    type: Literal["wallet.top_up"] = "wallet.top_up"
    version: Literal[1] = 1
    payment_id: StorableText = Field(min_length=1, max_length=100)
    wallet_id: UUID
    amount: AmountModel
    source: Literal["gateway_webhook", "auto_topup", "manual"] = "auto_topup"


# --- wallet.events -------------------------------------------------------------------------

class AutoTopUpSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: AmountModel
    amount: AmountModel
    card_token: StorableText = Field(min_length=1, max_length=100)


class WalletOpened(Envelope):
    """An organisation and its wallet exist; other services keep the mapping they need."""

    type: Literal["wallet.opened"] = "wallet.opened"
    version: Literal[1] = 1
    wallet_id: UUID
    organisation_id: UUID
    organisation_name: StorableText
    organisation_kind: Literal["customer", "reseller"]
    reseller_id: UUID | None = None
    currency: CurrencyCode
    billing_mode: BillingMode


class WalletLowBalance(Envelope):
    type: Literal["wallet.low_balance"] = "wallet.low_balance"
    version: Literal[1] = 1
    wallet_id: UUID
    organisation_id: UUID
    billing_mode: BillingMode
    available: MoneyModel
    threshold: MoneyModel
    auto_topup: AutoTopUpSettings | None = None


class WalletDepleted(Envelope):
    """Available funds are exhausted (PAYG) or the credit limit is passed (INVOICE)."""

    type: Literal["wallet.depleted"] = "wallet.depleted"
    version: Literal[1] = 1
    wallet_id: UUID
    organisation_id: UUID
    billing_mode: BillingMode
    available: MoneyModel


class WalletFundsRestored(Envelope):
    """A depleted wallet has available funds again (suspended VMs may resume)."""

    type: Literal["wallet.funds_restored"] = "wallet.funds_restored"
    version: Literal[1] = 1
    wallet_id: UUID
    organisation_id: UUID
    available: MoneyModel


class WalletToppedUp(Envelope):
    type: Literal["wallet.topped_up"] = "wallet.topped_up"
    version: Literal[1] = 1
    wallet_id: UUID
    payment_id: StorableText
    amount: MoneyModel
    balance_after: MoneyModel


class WalletRefunded(Envelope):
    type: Literal["wallet.refunded"] = "wallet.refunded"
    version: Literal[1] = 1
    wallet_id: UUID
    refund_id: UUID
    charge_entry_id: int
    vm_id: UUID | None = None  # the VM whose part of a usage entry was refunded
    amount: MoneyModel
    balance_after: MoneyModel


class DebitsApplied(Envelope):
    """The billing debits and credits a wallet booked in one batch (for reconciliation): the
    ids of usage entries (`ChargeUsage`), or of lines (`ChargeWallet`), debits and credits."""

    type: Literal["wallet.debits_applied"] = "wallet.debits_applied"
    version: Literal[1] = 1
    wallet_id: UUID
    debit_ids: list[UUID]
    credit_ids: list[UUID] = Field(default_factory=list)
    debited: MoneyModel
    credited: MoneyModel
    balance_after: MoneyModel


WalletEvent = Annotated[
    WalletOpened
    | WalletLowBalance
    | WalletDepleted
    | WalletFundsRestored
    | WalletToppedUp
    | WalletRefunded
    | DebitsApplied,
    Field(discriminator="type"),
]
