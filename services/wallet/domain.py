"""The wallet's rules, with no I/O: funds, holds, the ledger, thresholds, refunds.

Amounts are integer minor units in the wallet's currency. A `Wallet` is changed only
through its methods; each change that moves the balance appends a `LedgerEntry`, and each
change the rest of the platform must know about appends a `WalletFact`. The caller persists
both in one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from uuid import UUID

from shared.money import Money

REFUND_CAP_PERCENT = 95


class BillingMode(StrEnum):
    PAYG = "PAYG"
    INVOICE = "INVOICE"


class EntryKind(StrEnum):
    TOP_UP = "top_up"
    USAGE_DEBIT = "usage_debit"
    USAGE_CREDIT = "usage_credit"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"


class HoldStatus(StrEnum):
    PENDING = "pending"  # reserved, waiting for the provisioning outcome
    ACTIVE = "active"  # the VM exists; usage debits draw the hold down
    RELEASED = "released"
    EXPIRED = "expired"
    CONSUMED = "consumed"  # fully drawn down by usage

    @property
    def is_open(self) -> bool:
        return self in (HoldStatus.PENDING, HoldStatus.ACTIVE)


class Rejection(StrEnum):
    INSUFFICIENT_FUNDS = "insufficient_funds"
    UNKNOWN_WALLET = "unknown_wallet"
    CURRENCY_MISMATCH = "currency_mismatch"
    WALLET_SUSPENDED = "wallet_suspended"
    INVALID_AMOUNT = "invalid_amount"


class WalletError(ValueError):
    """A request the wallet refuses; the message is the reason given to the caller."""


class UnknownWallet(WalletError):
    pass


@dataclass
class Hold:
    hold_id: UUID
    request_id: UUID
    wallet_id: UUID
    vm_id: UUID
    purpose: str
    amount: int
    remaining: int
    status: HoldStatus
    created_at: datetime
    expires_at: datetime
    closed_at: datetime | None = None


@dataclass(frozen=True)
class LedgerEntry:
    wallet_id: UUID
    kind: EntryKind
    amount: int  # signed: credits positive, debits negative
    balance_after: int
    idempotency_key: str
    occurred_at: datetime
    hold_drawn: int = 0
    vm_id: UUID | None = None
    refunds_entry_id: int | None = None
    description: str = ""
    # A usage entry's VM parts (billing's lines it covers), positive amounts adding up to
    # the entry's; None for other entries.
    parts: UsageParts | None = None


@dataclass(frozen=True, slots=True)
class UsageParts:
    """The billing lines one usage entry covers, one per VM: parallel sequences."""

    vm_ids: Sequence[UUID]
    line_ids: Sequence[UUID]
    amounts: Sequence[int]  # positive

    def __post_init__(self) -> None:
        if not (len(self.vm_ids) == len(self.line_ids) == len(self.amounts)) \
                or not self.vm_ids:
            raise WalletError("a usage entry has one VM id, line id and amount per VM")
        if any(amount <= 0 for amount in self.amounts):
            raise WalletError("a usage entry's VM amounts must be positive")


# --- facts the wallet reports (translated to contract events by the handlers) ------------

@dataclass(frozen=True)
class Reserved:
    hold: Hold
    available_after: int


@dataclass(frozen=True)
class Rejected:
    request_id: UUID
    vm_id: UUID
    reason: Rejection
    detail: str
    required: int
    available: int | None


@dataclass(frozen=True)
class LowBalance:
    available: int
    threshold: int


@dataclass(frozen=True)
class Depleted:
    available: int


@dataclass(frozen=True)
class FundsRestored:
    available: int


@dataclass(frozen=True)
class ToppedUp:
    payment_id: str
    amount: int
    balance_after: int


@dataclass(frozen=True)
class Refunded:
    refund_id: UUID
    charge_entry_id: int
    amount: int
    balance_after: int
    vm_id: UUID | None = None


WalletFact = Reserved | Rejected | LowBalance | Depleted | FundsRestored | ToppedUp | Refunded


@dataclass(frozen=True)
class AutoTopUp:
    threshold: int
    amount: int
    card_token: str


@dataclass
class Wallet:
    wallet_id: UUID
    organisation_id: UUID
    currency: str
    billing_mode: BillingMode
    credit_limit: int = 0
    balance: int = 0
    held: int = 0
    suspended: bool = False
    low_balance_threshold: int = 0
    low_balance: bool = False
    depleted: bool = False
    auto_topup: AutoTopUp | None = None
    entries: list[LedgerEntry] = field(default_factory=list)
    facts: list[WalletFact] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.billing_mode is BillingMode.PAYG and self.credit_limit != 0:
            raise WalletError("a PAYG wallet has no credit limit")
        if self.credit_limit < 0:
            raise WalletError("credit limit must not be negative")

    def take_facts(self) -> list[WalletFact]:
        facts, self.facts = self.facts, []
        return facts

    @property
    def available(self) -> int:
        credit = self.credit_limit if self.billing_mode is BillingMode.INVOICE else 0
        return self.balance + credit - self.held

    # --- reservations ------------------------------------------------------------------

    def reserve(self, *, request_id: UUID, vm_id: UUID, hold_id: UUID, amount: int,
                currency: str, purpose: str, at: datetime, ttl: timedelta) -> Hold | None:
        """Hold `amount` for a provisioning request if the funds are there.

        Returns the hold, or None with a `Rejected` fact naming the reason.
        """

        def reject(reason: Rejection, detail: str, available: int | None = None) -> None:
            self.facts.append(Rejected(request_id, vm_id, reason, detail, amount, available))

        if currency != self.currency:
            reject(Rejection.CURRENCY_MISMATCH,
                   f"request is in {currency}, wallet is in {self.currency}")
            return None
        if amount <= 0:
            reject(Rejection.INVALID_AMOUNT, "amount to reserve must be positive")
            return None
        if self.suspended:
            reject(Rejection.WALLET_SUSPENDED, "wallet is suspended", self.available)
            return None
        if self.available < amount:
            reject(Rejection.INSUFFICIENT_FUNDS,
                   f"available {Money(self.available, self.currency).format()} is less than "
                   f"the required {Money(amount, self.currency).format()}", self.available)
            return None
        hold = Hold(hold_id, request_id, self.wallet_id, vm_id, purpose, amount, amount,
                    HoldStatus.PENDING, at, at + ttl)
        self.held += amount
        self.facts.append(Reserved(hold, self.available))
        self._check_thresholds()
        return hold

    def confirm(self, hold: Hold) -> None:
        """The VM exists: the hold stops expiring and waits to be drawn down by usage."""
        self._own(hold)
        if hold.status is HoldStatus.PENDING:
            hold.status = HoldStatus.ACTIVE

    def release(self, hold: Hold, at: datetime, status: HoldStatus = HoldStatus.RELEASED) -> None:
        self._own(hold)
        if not hold.status.is_open:
            return
        self.held -= hold.remaining
        hold.remaining = 0
        hold.status = status
        hold.closed_at = at
        self._check_thresholds()

    def _own(self, hold: Hold) -> None:
        # Another wallet's hold would move its funds into this wallet's `held`.
        if hold.wallet_id != self.wallet_id:
            raise WalletError(f"hold {hold.hold_id} of request {hold.request_id} belongs to "
                              f"wallet {hold.wallet_id}, not {self.wallet_id}")

    def expire(self, hold: Hold, now: datetime) -> bool:
        if hold.status is HoldStatus.PENDING and hold.expires_at <= now:
            self.release(hold, now, HoldStatus.EXPIRED)
            return True
        return False

    # --- balance changes ---------------------------------------------------------------

    def debit_usage(self, *, amount: int, key: str, at: datetime, vm_id: UUID | None,
                    holds: Sequence[Hold] | Mapping[UUID, Sequence[Hold]],
                    description: str = "usage", parts: UsageParts | None = None
                    ) -> LedgerEntry:
        """Book usage. It happened, so it is always recorded, whatever the funds. Each VM's
        usage draws down that VM's open holds first (oldest first): the entry's VM parts
        when it covers several VMs, else all of it for `vm_id`. `holds` are the wallet's
        open holds, or the same by VM id."""
        if amount <= 0:
            raise WalletError("a debit must be positive")
        if parts is not None and sum(parts.amounts) != amount:
            raise WalletError(f"the VM parts add up to {sum(parts.amounts)}, not {amount}")
        by_vm = holds if isinstance(holds, Mapping) else holds_by_vm(holds)
        drawn = 0
        if parts is None:
            if vm_id is not None:
                drawn = self._draw(by_vm.get(vm_id, ()), vm_id, amount, at)
        else:
            for part_vm, part in zip(parts.vm_ids, parts.amounts, strict=True):
                vm_holds = by_vm.get(part_vm)
                if vm_holds:
                    drawn += self._draw(vm_holds, part_vm, part, at)
        self.held -= drawn
        return self._book(EntryKind.USAGE_DEBIT, -amount, key, at, vm_id=vm_id,
                          hold_drawn=drawn, description=description, parts=parts)

    def _draw(self, holds: Sequence[Hold], vm_id: UUID, amount: int, at: datetime) -> int:
        """Draw `amount` of one VM's usage from its open holds, oldest first."""
        to_draw = amount
        for hold in holds:
            if to_draw == 0:
                break
            if not hold.status.is_open or hold.vm_id != vm_id \
                    or hold.wallet_id != self.wallet_id:
                continue
            take = min(hold.remaining, to_draw)
            hold.remaining -= take
            to_draw -= take
            if hold.remaining == 0:
                hold.status = HoldStatus.CONSUMED
                hold.closed_at = at
        return amount - to_draw

    def credit_usage(self, *, amount: int, key: str, at: datetime, vm_id: UUID | None,
                     description: str = "usage correction", parts: UsageParts | None = None
                     ) -> LedgerEntry:
        if amount <= 0:
            raise WalletError("a credit must be positive")
        if parts is not None and sum(parts.amounts) != amount:
            raise WalletError(f"the VM parts add up to {sum(parts.amounts)}, not {amount}")
        return self._book(EntryKind.USAGE_CREDIT, amount, key, at, vm_id=vm_id,
                          description=description, parts=parts)

    def top_up(self, *, payment_id: str, amount: int, currency: str, at: datetime,
               max_amount: int) -> LedgerEntry:
        if currency != self.currency:
            raise WalletError(f"payment is in {currency}, wallet is in {self.currency}")
        if amount <= 0:
            raise WalletError("top-up amount must be positive")
        if amount > max_amount:
            raise WalletError(f"top-up amount exceeds the maximum of {max_amount}")
        entry = self._book(EntryKind.TOP_UP, amount, ledger_key("payment", payment_id), at,
                           description=f"top-up {payment_id}")
        self.facts.append(ToppedUp(payment_id, amount, self.balance))
        return entry

    def refund(self, *, refund_id: UUID, charge: Refundable, amount: int, at: datetime,
               reason: str = "", vm_id: UUID | None = None) -> LedgerEntry:
        """Give back part of a charge, or of one VM's part of a usage entry, within every
        cap `refund_limits` gives (95% of what it still costs, counting earlier refunds)."""
        if amount <= 0:
            raise WalletError("refund amount must be positive")
        limits = refund_limits(charge, vm_id)
        for limit in limits.caps:
            if limit.refunded + amount > limit.cap:
                raise WalletError(
                    f"refund would exceed {REFUND_CAP_PERCENT}% of {limit.of}: cap {limit.cap}, "
                    f"already refunded {limit.refunded}, requested {amount}")
        vm_id = limits.vm_id
        entry = self._book(EntryKind.REFUND, amount, ledger_key("refund", refund_id), at,
                           vm_id=vm_id, refunds_entry_id=charge.entry_id,
                           description=reason or f"refund of entry {charge.entry_id}"
                           + (f" (vm {vm_id})" if vm_id else ""))
        self.facts.append(Refunded(refund_id, charge.entry_id, amount, self.balance, vm_id))
        return entry

    def _book(self, kind: EntryKind, amount: int, key: str, at: datetime, *,
              vm_id: UUID | None = None, hold_drawn: int = 0, refunds_entry_id: int | None = None,
              description: str = "", parts: UsageParts | None = None) -> LedgerEntry:
        self.balance += amount
        entry = LedgerEntry(self.wallet_id, kind, amount, self.balance, key, at, hold_drawn,
                            vm_id, refunds_entry_id, description, parts)
        self.entries.append(entry)
        self._check_thresholds()
        return entry

    def set_auto_topup(self, auto: AutoTopUp | None) -> None:
        """Turning auto top-up on, or raising its trigger above the funds, while funds are
        already below it asks for a top-up now: the crossing that would have asked happened
        before. A crossing already asked about (funds were below the old trigger, with auto
        top-up on) asks nothing again, so a repeated PUT, or a new amount or card while a
        top-up is on its way, charges no card twice."""
        asked_already = (self.auto_topup is not None
                         and self.available < self.effective_low_threshold)
        self.auto_topup = auto
        available = self.available
        if auto is not None and not asked_already and available < self.effective_low_threshold:
            self.low_balance = True
            self.facts.append(LowBalance(available, self.effective_low_threshold))

    # --- thresholds: edge-triggered, one event per crossing --------------------------------

    def _check_thresholds(self) -> None:
        # Depleted only below zero: a hold that takes every last cent still funds its VM
        # (usage draws the hold down, not the available funds). Restored only above zero.
        available = self.available
        if available < 0 and not self.depleted:
            self.depleted = True
            self.facts.append(Depleted(available))
        elif available > 0 and self.depleted:
            self.depleted = False
            self.facts.append(FundsRestored(available))
        low = available < self.effective_low_threshold
        if low and not self.low_balance:
            self.low_balance = True
            self.facts.append(LowBalance(available, self.effective_low_threshold))
        elif not low and self.low_balance:
            self.low_balance = False

    @property
    def effective_low_threshold(self) -> int:
        """The higher of the alert threshold and the auto top-up trigger."""
        auto = self.auto_topup.threshold if self.auto_topup else 0
        return max(self.low_balance_threshold, auto)


def ledger_key(kind: str, source_id: object) -> str:
    """A ledger row's idempotency key (unique per wallet): what moved the money and its id,
    e.g. `debit:<line id>`, `payment:<payment id>`, `refund:<refund id>`."""
    return f"{kind}:{source_id}"


def refund_cap(charge: int) -> int:
    """The most that may ever be refunded of a charge (rounded down)."""
    return charge * REFUND_CAP_PERCENT // 100


def holds_by_vm(holds: Sequence[Hold]) -> dict[UUID, list[Hold]]:
    """Open holds by VM, oldest first as given."""
    by_vm: dict[UUID, list[Hold]] = {}
    for hold in holds:
        by_vm.setdefault(hold.vm_id, []).append(hold)
    return by_vm


def usage_description(kind: str, hour_start: datetime, revision: int, vm_count: int,
                      amount: int, currency: str) -> str:
    """A usage entry as people read it: "Usage 14:00–15:00 UTC · 12 VMs · R9.84"."""
    start = hour_start.astimezone(UTC)
    end = start + timedelta(hours=1)
    what = "Usage" if kind == "debit" else "Usage correction"
    if revision:
        what += f" (revision {revision})"
    vms = "1 VM" if vm_count == 1 else f"{vm_count} VMs"
    return (f"{what} {start:%H:%M}–{end:%H:%M} UTC · {vms} · "
            f"{Money(amount, currency).format()}")


# --- refunds: what a refund of an entry (or of one VM's part) may give back -----------------

@dataclass(frozen=True, slots=True)
class HourEntry:
    """A usage entry of the wallet's hour: its ledger id, debit or credit, and its amount
    per VM (an entry of one VM booked per line has one part; one of no VM, none)."""

    entry_id: int
    debit: bool
    amount: int  # positive
    parts: Mapping[UUID, int]  # positive, per VM


@dataclass(frozen=True, slots=True)
class PastRefund:
    refunds_entry_id: int
    vm_id: UUID | None
    amount: int


@dataclass(frozen=True, slots=True)
class Refundable:
    """A ledger entry asked to be refunded and what its caps depend on: for a usage debit,
    every usage entry of its wallet and hour (itself included) and the refunds of the hour's
    debits; for any other entry, its own refunds."""

    entry_id: int
    amount: int  # signed, as booked
    hour: Sequence[HourEntry] | None
    refunds: Sequence[PastRefund]


@dataclass(frozen=True, slots=True)
class RefundLimit:
    cap: int
    refunded: int  # counted against the cap so far
    of: str  # what the cap is 95% of, for the refusal


@dataclass(slots=True)
class RefundLimits:
    """The caps a refund must stay within, and the VM it is booked against (if any)."""

    caps: list[RefundLimit] = field(default_factory=list)
    vm_id: UUID | None = None


def refund_limits(charge: Refundable, vm_id: UUID | None = None) -> RefundLimits:
    """Every cap a refund of `charge` (or of VM `vm_id`'s part of it) must stay within.

    A usage debit is refundable on what its hour still costs after the hour's correction
    credits: at most 95% of the entry (or of the VM's part) capped by what the hour (or the
    VM in that hour) still costs, counting the entry's (or the VM's) earlier refunds; and the
    refunds of all the hour's debits (or of the VM in them) together stay within 95% of what
    the hour (or the VM's hour) still costs. An entry of one VM is refunded as that VM's."""
    if charge.amount >= 0:
        raise WalletError("only a charge (a debit) can be refunded")
    limits = RefundLimits()
    base = -charge.amount
    mine = [r for r in charge.refunds if r.refunds_entry_id == charge.entry_id]
    if charge.hour is None:
        if vm_id is not None:
            raise WalletError(f"entry {charge.entry_id} is not a usage entry with VMs")
        limits.caps.append(RefundLimit(refund_cap(base), sum(r.amount for r in mine),
                                  "the charge"))
        return limits
    this = next(e for e in charge.hour if e.entry_id == charge.entry_id)
    debits = {e.entry_id for e in charge.hour if e.debit}
    of_hour = [r for r in charge.refunds if r.refunds_entry_id in debits]
    still = sum(e.amount if e.debit else -e.amount for e in charge.hour)
    corrected = " after the hour's correction credits" if still < base else ""
    limits.caps.append(RefundLimit(refund_cap(max(0, min(base, still))),
                              sum(r.amount for r in mine), f"the entry{corrected}"))
    limits.caps.append(RefundLimit(refund_cap(max(0, still)), sum(r.amount for r in of_hour),
                              "what the hour still costs"))
    if vm_id is None and len(this.parts) == 1:
        (vm_id,) = this.parts
    if vm_id is None:
        return limits
    if vm_id not in this.parts:
        raise WalletError(f"vm {vm_id} has no part in entry {charge.entry_id}")
    part = this.parts[vm_id]
    vm_still = sum(e.parts.get(vm_id, 0) * (1 if e.debit else -1) for e in charge.hour)
    corrected = " after the hour's correction credits" if vm_still < part else ""
    limits.caps.append(RefundLimit(refund_cap(max(0, min(part, vm_still))),
                              sum(r.amount for r in mine if r.vm_id == vm_id),
                              f"vm {vm_id}'s part of the entry{corrected}"))
    limits.caps.append(RefundLimit(refund_cap(max(0, vm_still)),
                              sum(r.amount for r in of_hour if r.vm_id == vm_id),
                              f"what vm {vm_id} still costs in the hour"))
    limits.vm_id = vm_id
    return limits


@dataclass(frozen=True)
class BurnRate:
    per_hour: int
    runway_hours: float | None  # None: nothing is burning


def burn_rate(usage_last_24h: int, available: int) -> BurnRate:
    """Usage over the last 24 hours, as an hourly rate, and how long the funds last at it."""
    per_hour = usage_last_24h // 24
    if usage_last_24h <= 0:
        return BurnRate(0, None)
    return BurnRate(per_hour, max(available, 0) * 24 / usage_last_24h)
