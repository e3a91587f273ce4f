"""The domain's facts as contract messages, each on its topic and key, for the outbox."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from services.provisioning.domain import (
    AskForFunds,
    CreateVmCommand,
    Decommissioned,
    DeleteVmCommand,
    Fact,
    Outcome,
    PowerOffCommand,
    PowerOnCommand,
    ResizeVmCommand,
)
from shared.contracts.base import Envelope, deterministic_id
from shared.contracts.vcenter import CreateVm, DeleteVm, PowerOffVm, PowerOnVm, ResizeVm
from shared.contracts.wallet import (
    ProvisioningCancelled,
    ProvisioningFailed,
    ProvisioningSucceeded,
    ReserveFunds,
    VmDecommissioned,
)
from shared.money import MoneyModel
from shared.outbox import Outgoing, outgoing
from shared.settings import Settings
from shared.topics import PROVISIONING_OUTCOMES, PROVISIONING_REQUESTS, VCENTER_COMMANDS

OUTCOME_MODELS: dict[str, type[Envelope]] = {
    "succeeded": ProvisioningSucceeded, "failed": ProvisioningFailed,
    "cancelled": ProvisioningCancelled,
}


class Messages:
    """Collects the outgoing messages of one transaction.

    Event ids derive from the fact's subject and the message that caused it, so a batch that
    is retried after a rollback produces the very same messages. The request id is every
    saga message's correlation id.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.out: list[Outgoing] = []

    def add(self, facts: Sequence[Fact], cause: Envelope | None) -> None:
        for fact in facts:
            self.out.append(self._one(fact, cause))

    def _one(self, fact: Fact, cause: Envelope | None) -> Outgoing:
        because = cause.event_id if cause is not None else "direct"
        causation = cause.event_id if cause is not None else None
        commands, outcomes = VCENTER_COMMANDS.name, PROVISIONING_OUTCOMES.name
        match fact:
            case AskForFunds(request=r):
                return self._to(PROVISIONING_REQUESTS.name, r.wallet_id, ReserveFunds(
                    event_id=deterministic_id("reserve", r.request_id), request_id=r.request_id,
                    wallet_id=r.wallet_id, organisation_id=r.organisation_id, vm_id=r.vm_id,
                    purpose=r.kind.value, amount=MoneyModel(amount_minor=r.amount,
                                                            currency=r.currency),
                    occurred_at=r.received_at, correlation_id=r.request_id,
                    causation_id=causation))
            case CreateVmCommand(request=r, at=at):
                return self._to(commands, r.vm_id, CreateVm(
                    event_id=deterministic_id("create_vm", r.request_id, because),
                    vm_id=r.vm_id, request_id=r.request_id, organisation_id=r.organisation_id,
                    wallet_id=r.wallet_id, name=r.name, spec=r.spec, occurred_at=at,
                    correlation_id=r.request_id, causation_id=causation))
            case ResizeVmCommand(vm_id=vm_id, request_id=rid, spec=spec, at=at,
                                 correlation_id=correlation):
                return self._to(commands, vm_id, ResizeVm(
                    event_id=deterministic_id("resize_vm", rid, because), vm_id=vm_id,
                    request_id=rid, spec=spec, occurred_at=at, correlation_id=correlation,
                    causation_id=causation))
            case DeleteVmCommand(vm_id=vm_id, at=at):
                return self._to(commands, vm_id, DeleteVm(
                    event_id=deterministic_id("delete_vm", vm_id, because), vm_id=vm_id,
                    occurred_at=at, causation_id=causation))
            case PowerOffCommand(vm_id=vm_id, at=at):
                return self._to(commands, vm_id, PowerOffVm(
                    event_id=deterministic_id("power_off_vm", vm_id, because), vm_id=vm_id,
                    reason="suspended_for_funds", occurred_at=at, causation_id=causation))
            case PowerOnCommand(vm_id=vm_id, at=at):
                return self._to(commands, vm_id, PowerOnVm(
                    event_id=deterministic_id("power_on_vm", vm_id, because), vm_id=vm_id,
                    reason="funds_restored", occurred_at=at, causation_id=causation))
            case Outcome(kind=kind, request=r, at=at):
                model = OUTCOME_MODELS[kind]
                extra = {"reason": r.reason or "failed"} if kind == "failed" else {}
                message = model.model_validate({
                    "event_id": deterministic_id("provisioning", kind, r.request_id, because),
                    "request_id": r.request_id, "wallet_id": r.wallet_id, "vm_id": r.vm_id,
                    "occurred_at": at, "correlation_id": r.request_id,
                    "causation_id": causation, **extra})
                return self._to(outcomes, r.wallet_id, message)
            case Decommissioned(vm_id=vm_id, wallet_id=wallet_id, at=at):
                return self._to(outcomes, wallet_id, VmDecommissioned(
                    event_id=deterministic_id("vm_decommissioned", vm_id), vm_id=vm_id,
                    wallet_id=wallet_id, occurred_at=at, causation_id=causation))
        raise AssertionError(f"unhandled fact {fact!r}")

    def _to(self, topic: str, key: UUID, message: Envelope) -> Outgoing:
        return outgoing(self.settings.topic(topic), key, message)
