"""The provisioning saga's rules, with no I/O: sizes and prices, the states of a request and
the transitions each message causes, timeouts in event time, and suspending VMs for funds.

Entities change only through their methods. A change another service must hear about is
returned as a fact (ask the wallet for funds, a vCenter command, an outcome for the hold);
the handlers turn facts into contract messages and commit them with the state, together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal
from uuid import UUID

from pydantic import ValidationError

from shared.contracts.vm import TIER_SHAPES, VmSpec
from shared.pricing import RateCard, RateCardBook, round_requirement


def event_now(clock: datetime | None, at: datetime) -> datetime:
    """Event time of something happening at `at`: never behind the clock ticks seen, so a
    simulated clock running ahead of the wall clock stays the one clock that counts."""
    return at if clock is None else max(clock, at)


class RequestKind(StrEnum):
    CREATE = "create"
    RESIZE = "resize"


class RequestStatus(StrEnum):
    AWAITING_FUNDS = "awaiting_funds"  # ReserveFunds sent, no wallet decision yet
    AWAITING_VCENTER = "awaiting_vcenter"  # funds held (or none needed), command sent
    SUCCEEDED = "succeeded"
    REJECTED = "rejected"  # the wallet refused the funds
    FAILED = "failed"  # vCenter failed, or a step timed out
    CANCELLED = "cancelled"

    @property
    def is_open(self) -> bool:
        return self in (RequestStatus.AWAITING_FUNDS, RequestStatus.AWAITING_VCENTER)


class PowerState(StrEnum):
    POWERED_OFF = "powered_off"
    RUNNING = "running"
    SUSPENDED = "suspended"  # vCenter's own suspend (VmSuspended)
    DELETING = "deleting"
    DELETED = "deleted"

    @property
    def is_gone(self) -> bool:
        return self in (PowerState.DELETING, PowerState.DELETED)


class InvalidRequest(ValueError):
    """The request cannot be accepted as given (HTTP 422, or a dead letter)."""


class UnknownOrganisation(InvalidRequest):
    """No wallet was opened for this organisation (HTTP 404, or a dead letter)."""


class Conflict(ValueError):
    """The request clashes with the current state (HTTP 409)."""


# --- sizes and prices ----------------------------------------------------------------------

def spec_of(tier: str | None, vcpu: int | None, ram_gb: int | None,
            disk_gb: int | None) -> VmSpec:
    """A VM size from a tier name or a custom vCPU / RAM / disk, with a reason if invalid."""
    disk = 50 if disk_gb is None else disk_gb
    try:
        if tier is not None:
            if tier not in TIER_SHAPES:
                raise InvalidRequest(f"unknown tier {tier!r}; tiers: {', '.join(TIER_SHAPES)}")
            tier_vcpu, tier_ram = TIER_SHAPES[tier]
            return VmSpec(tier=tier, vcpu=tier_vcpu if vcpu is None else vcpu,  # type: ignore[arg-type]
                          ram_gb=tier_ram if ram_gb is None else ram_gb, disk_gb=disk)
        if vcpu is None or ram_gb is None:
            raise InvalidRequest("a custom size needs vcpu and ram_gb (or give a tier)")
        return VmSpec(vcpu=vcpu, ram_gb=ram_gb, disk_gb=disk)
    except ValidationError as error:
        raise InvalidRequest("invalid size: " + "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'spec'}: {e['msg']}"
            for e in error.errors()[:3])) from None


@dataclass(frozen=True)
class Price:
    amount: int  # minor units the wallet must hold; 0: no hold needed
    currency: str
    rate_card_version: str


def _card_of(book: RateCardBook, when: datetime, currency: str) -> RateCard:
    """The card of the wallet's currency in effect at `when`: never another currency's."""
    try:
        return book.at(when, currency)
    except LookupError as error:
        raise InvalidRequest(f"no price for the organisation's {currency} wallet: "
                             f"{error}") from None


def price_create(book: RateCardBook, spec: VmSpec, when: datetime, currency: str) -> Price:
    """A new VM holds one month of its price (rounded up), in the wallet's currency."""
    card = _card_of(book, when, currency)
    return Price(round_requirement(card.monthly_price(spec), currency).amount, currency,
                 card.version)


def price_resize(book: RateCardBook, current: VmSpec, new: VmSpec, when: datetime,
                 currency: str) -> Price:
    """A resize holds the increase of the monthly price; a cheaper size needs no hold."""
    card = _card_of(book, when, currency)
    increase = (round_requirement(card.monthly_price(new), currency).amount
                - round_requirement(card.monthly_price(current), currency).amount)
    return Price(max(increase, 0), currency, card.version)


# --- facts: what other services must hear -----------------------------------------------------

@dataclass(frozen=True)
class AskForFunds:
    request: VmRequest


@dataclass(frozen=True)
class CreateVmCommand:
    request: VmRequest
    at: datetime


@dataclass(frozen=True)
class ResizeVmCommand:
    vm_id: UUID
    request_id: UUID
    spec: VmSpec
    at: datetime
    correlation_id: UUID


@dataclass(frozen=True)
class DeleteVmCommand:
    vm_id: UUID
    at: datetime


@dataclass(frozen=True)
class PowerOffCommand:
    vm_id: UUID
    at: datetime


@dataclass(frozen=True)
class PowerOnCommand:
    vm_id: UUID
    at: datetime


@dataclass(frozen=True)
class Outcome:
    """How a request that asked for funds ended: the wallet keeps or releases the hold."""

    kind: Literal["succeeded", "failed", "cancelled"]
    request: VmRequest
    at: datetime


@dataclass(frozen=True)
class Decommissioned:
    vm_id: UUID
    wallet_id: UUID
    at: datetime


Fact = (AskForFunds | CreateVmCommand | ResizeVmCommand | DeleteVmCommand | PowerOffCommand
        | PowerOnCommand | Outcome | Decommissioned)


# --- organisations ------------------------------------------------------------------------

@dataclass
class Organisation:
    organisation_id: UUID
    wallet_id: UUID
    currency: str
    billing_mode: str
    suspended: bool = False

    def funds_depleted(self, vms: Sequence[Vm], now: datetime) -> list[Fact]:
        """PAYG out of funds, or INVOICE past its credit limit: power off running VMs."""
        self.suspended = True
        return [f for vm in vms for f in vm.suspend_for_funds(now)]

    def funds_restored(self, vms: Sequence[Vm], now: datetime) -> list[Fact]:
        """Power on what we suspended, and only that (a VM the customer stopped stays off)."""
        self.suspended = False
        return [f for vm in vms for f in vm.resume_after_funds(now)]


# --- provisioning and resize requests ---------------------------------------------------------

@dataclass
class VmRequest:
    request_id: UUID
    kind: RequestKind
    organisation_id: UUID
    wallet_id: UUID
    vm_id: UUID
    name: str
    spec: VmSpec
    amount: int
    currency: str
    rate_card_version: str
    status: RequestStatus
    received_at: datetime
    updated_at: datetime
    deadline: datetime | None
    idempotency_key: str | None = None
    previous_spec: VmSpec | None = None
    reason: str | None = None
    hold_id: UUID | None = None

    @property
    def holds_funds(self) -> bool:
        return self.amount > 0

    def same_intent(self, name: str, spec: VmSpec) -> bool:
        return self.name == name and self.spec == spec

    def _end(self, status: RequestStatus, now: datetime, reason: str | None = None) -> None:
        self.status = status
        self.reason = reason
        self.deadline = None
        self.updated_at = max(now, self.updated_at)

    def _outcome(self, kind: Literal["succeeded", "failed", "cancelled"],
                 now: datetime) -> list[Fact]:
        return [Outcome(kind, self, now)] if self.holds_funds else []

    def _command(self, at: datetime) -> Fact:
        if self.kind is RequestKind.CREATE:
            return CreateVmCommand(self, at)
        return ResizeVmCommand(self.vm_id, self.request_id, self.spec, at, self.request_id)

    def _await_vcenter(self, at: datetime, vcenter_timeout: timedelta,
                       hold_expires_at: datetime | None = None) -> list[Fact]:
        self.status = RequestStatus.AWAITING_VCENTER
        self.deadline = at + vcenter_timeout
        if hold_expires_at is not None:
            # Give up on vCenter by the time the wallet lets the hold go: a VM created after
            # that would run on funds already returned (it is deleted instead).
            self.deadline = min(self.deadline, hold_expires_at)
        self.updated_at = max(at, self.updated_at)
        return [self._command(at)]

    # wallet.decisions

    def funds_reserved(self, hold_id: UUID, clock: datetime | None, vcenter_timeout: timedelta,
                       hold_expires_at: datetime | None = None) -> list[Fact]:
        if self.status is RequestStatus.AWAITING_FUNDS:
            self.hold_id = hold_id
            at = event_now(clock, self.received_at)
            if hold_expires_at is not None and hold_expires_at <= at:
                # Decided so late that the hold is already due to expire: no VM on it.
                self._end(RequestStatus.FAILED, at, "timeout: the hold expired before vCenter "
                          "was asked")
                return self._outcome("failed", at)
            return self._await_vcenter(at, vcenter_timeout, hold_expires_at)
        if self.status in (RequestStatus.CANCELLED, RequestStatus.FAILED):
            # We gave up before the wallet answered: the hold it just made must go back.
            kind: Literal["failed", "cancelled"] = (
                "cancelled" if self.status is RequestStatus.CANCELLED else "failed")
            self.hold_id = hold_id
            return [Outcome(kind, self, self.updated_at)]
        return []

    def funds_rejected(self, reason: str, detail: str, now: datetime) -> list[Fact]:
        if self.status is RequestStatus.AWAITING_FUNDS:
            self._end(RequestStatus.REJECTED, now, f"{reason}: {detail}")
        return []

    # vcenter.events

    def vm_created(self, now: datetime) -> list[Fact]:
        """Returns the facts; a VM created for a request we gave up on is deleted again."""
        if self.status is RequestStatus.AWAITING_VCENTER:
            self._end(RequestStatus.SUCCEEDED, now)
            return self._outcome("succeeded", now)
        if self.status in (RequestStatus.FAILED, RequestStatus.CANCELLED):
            return [DeleteVmCommand(self.vm_id, now)]
        return []

    def vm_resized(self, now: datetime) -> list[Fact]:
        if self.status is RequestStatus.AWAITING_VCENTER:
            self._end(RequestStatus.SUCCEEDED, now)
            return self._outcome("succeeded", now)
        if self.status in (RequestStatus.FAILED, RequestStatus.CANCELLED) \
                and self.previous_spec is not None:
            # Its funds went back already, so the VM goes back to the size they paid for.
            return [ResizeVmCommand(self.vm_id, revert_request_id(self.request_id),
                                    self.previous_spec, now, self.request_id)]
        return []

    def vcenter_failed(self, reason: str, now: datetime) -> list[Fact]:
        if self.status is RequestStatus.AWAITING_VCENTER:
            self._end(RequestStatus.FAILED, now, f"vcenter: {reason}")
            return self._outcome("failed", now)
        return []

    # the customer and the clock

    def cancel(self, now: datetime) -> list[Fact]:
        if self.status is RequestStatus.CANCELLED:
            return []
        if not self.status.is_open:
            raise Conflict(f"request {self.request_id} is {self.status.value}; "
                           "only a request still in progress can be cancelled")
        self._end(RequestStatus.CANCELLED, now, "cancelled by the customer")
        return self._outcome("cancelled", now)

    def time_out(self, now: datetime) -> list[Fact]:
        if not self.status.is_open or self.deadline is None or self.deadline > now:
            return []
        waiting_for = "the wallet" if self.status is RequestStatus.AWAITING_FUNDS else "vCenter"
        self._end(RequestStatus.FAILED, now,
                  f"timeout: no answer from {waiting_for} by {self.deadline.isoformat()}")
        return self._outcome("failed", now)


def revert_request_id(request_id: UUID) -> UUID:
    from shared.contracts.base import deterministic_id

    return deterministic_id("provisioning.resize_revert", request_id)


def new_create_request(*, request_id: UUID, idempotency_key: str, organisation: Organisation,
                       vm_id: UUID, name: str, spec: VmSpec, book: RateCardBook,
                       now: datetime, funds_timeout: timedelta) -> tuple[VmRequest, list[Fact]]:
    price = price_create(book, spec, now, organisation.currency)
    request = VmRequest(
        request_id=request_id, kind=RequestKind.CREATE,
        organisation_id=organisation.organisation_id, wallet_id=organisation.wallet_id,
        vm_id=vm_id, name=name, spec=spec,
        amount=price.amount, currency=price.currency, rate_card_version=price.rate_card_version,
        status=RequestStatus.AWAITING_FUNDS, received_at=now, updated_at=now,
        deadline=now + funds_timeout, idempotency_key=idempotency_key)
    return request, [AskForFunds(request)]


def new_resize_request(*, request_id: UUID, idempotency_key: str | None,
                       organisation: Organisation, vm: Vm, spec: VmSpec,
                       open_requests: Sequence[VmRequest], book: RateCardBook, now: datetime,
                       funds_timeout: timedelta, vcenter_timeout: timedelta
                       ) -> tuple[VmRequest, list[Fact]]:
    if vm.power_state.is_gone:
        raise Conflict(f"VM {vm.vm_id} is {vm.power_state.value}")
    if any(r.status.is_open for r in open_requests):
        raise Conflict(f"VM {vm.vm_id} has a request in progress")
    if reverting(vm, open_requests, now, vcenter_timeout):
        # Priced from the size it has now, a resize would skip paying for the one it had.
        raise Conflict(f"VM {vm.vm_id} is being resized back to the size it was paid for")
    if spec == vm.spec:
        raise InvalidRequest(f"VM {vm.vm_id} already has this size")
    price = price_resize(book, vm.spec, spec, now, organisation.currency)
    request = VmRequest(
        request_id=request_id, kind=RequestKind.RESIZE, organisation_id=vm.organisation_id,
        wallet_id=vm.wallet_id, vm_id=vm.vm_id, name=vm.name, spec=spec, amount=price.amount,
        currency=price.currency, rate_card_version=price.rate_card_version,
        status=RequestStatus.AWAITING_FUNDS, received_at=now, updated_at=now,
        deadline=now + funds_timeout, idempotency_key=idempotency_key, previous_spec=vm.spec)
    if request.holds_funds:
        return request, [AskForFunds(request)]
    return request, request._await_vcenter(now, vcenter_timeout)


def reverting(vm: Vm, requests: Sequence[VmRequest], now: datetime,
              vcenter_timeout: timedelta) -> bool:
    """Whether vCenter applied the VM's latest resize after the request had failed or been
    cancelled (its funds went back), so a resize back to the paid size is on its way. After
    vCenter's timeout from the VM's last change the revert is taken as lost (it is not
    tracked), so a VM is never locked out of resizes."""
    resizes = [r for r in requests if r.kind is RequestKind.RESIZE]
    if not resizes:
        return False
    latest = max(resizes, key=lambda r: r.received_at)
    return (latest.status in (RequestStatus.FAILED, RequestStatus.CANCELLED)
            and latest.previous_spec is not None and vm.spec == latest.spec
            and vm.spec != latest.previous_spec and now < vm.updated_at + vcenter_timeout)


# --- VMs ----------------------------------------------------------------------------------

@dataclass
class Vm:
    vm_id: UUID
    organisation_id: UUID
    wallet_id: UUID
    name: str
    spec: VmSpec
    power_state: PowerState
    created_at: datetime
    updated_at: datetime
    suspended_for_funds: bool = False
    created_request_id: UUID | None = None

    def _at(self, now: datetime) -> None:
        self.updated_at = max(now, self.updated_at)

    def powered_on(self, now: datetime, organisation_suspended: bool) -> list[Fact]:
        if self.power_state.is_gone:
            return []
        self.power_state = PowerState.RUNNING
        self._at(now)
        if organisation_suspended and not self.suspended_for_funds:
            # Reserved before the funds ran out, but it must not run on credit either.
            self.suspended_for_funds = True
            return [PowerOffCommand(self.vm_id, now)]
        return []

    def powered_off(self, now: datetime, state: PowerState = PowerState.POWERED_OFF) -> None:
        if not self.power_state.is_gone:
            self.power_state = state
            self._at(now)

    def resized(self, spec: VmSpec, now: datetime) -> None:
        self.spec = spec
        self._at(now)

    def deleted(self, now: datetime) -> list[Fact]:
        if self.power_state is PowerState.DELETED:
            return []
        self.power_state = PowerState.DELETED
        self.suspended_for_funds = False
        self._at(now)
        return [Decommissioned(self.vm_id, self.wallet_id, now)]

    def delete(self, now: datetime) -> list[Fact]:
        if self.power_state.is_gone:
            return []
        self.power_state = PowerState.DELETING
        self._at(now)
        return [DeleteVmCommand(self.vm_id, now)]

    def suspend_for_funds(self, now: datetime) -> list[Fact]:
        if self.power_state is not PowerState.RUNNING or self.suspended_for_funds:
            return []
        self.suspended_for_funds = True
        self._at(now)
        return [PowerOffCommand(self.vm_id, now)]

    def resume_after_funds(self, now: datetime) -> list[Fact]:
        if not self.suspended_for_funds:
            return []
        self.suspended_for_funds = False
        self._at(now)
        return [] if self.power_state.is_gone else [PowerOnCommand(self.vm_id, now)]


def vm_from_created(*, vm_id: UUID, organisation_id: UUID, wallet_id: UUID, spec: VmSpec,
                    request: VmRequest | None, now: datetime) -> tuple[Vm, list[Fact]]:
    """vCenter says the VM exists. It stays, unless its request already ended without it."""
    facts = request.vm_created(now) if request is not None else []
    vm = Vm(vm_id=vm_id, organisation_id=organisation_id, wallet_id=wallet_id,
            name=request.name if request else "", spec=spec, power_state=PowerState.POWERED_OFF,
            created_at=now, updated_at=now,
            created_request_id=request.request_id if request else None)
    if any(isinstance(f, DeleteVmCommand) for f in facts):
        vm.power_state = PowerState.DELETING
    return vm, facts
