"""How the simulated vCenter answers each command, with no I/O.

Deterministic on purpose: the answer depends only on the command and the configuration, and
each event's id derives from the command's id, so a redelivered command yields the very same
events (consumers drop the repeats). Event time is the command's time plus a delay.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from shared.contracts.base import Envelope, deterministic_id
from shared.contracts.vcenter import (
    CreateVm,
    DeleteVm,
    PowerOffVm,
    PowerOnVm,
    ResizeVm,
    VmCreated,
    VmCreateFailed,
    VmDeleted,
    VmEvent,
    VmPoweredOff,
    VmPoweredOn,
    VmResized,
    VmResizeFailed,
)


@dataclass(frozen=True)
class SimulatorConfig:
    create_delay_s: int = 30
    power_on_delay_s: int = 5  # after VmCreated
    power_delay_s: int = 5  # power off / on commands
    resize_delay_s: int = 10
    delete_delay_s: int = 10
    fail_prefix: str = "fail-"  # VMs named like this fail to create
    silent_prefix: str = "hang-"  # ... and these never get an answer (timeouts)
    failure_percent: int = 0  # also fail this share of creates, chosen by vm_id
    max_vcpu: int = 64  # a resize beyond what a host has fails


def create_failure(vm_id: UUID, name: str, config: SimulatorConfig) -> str | None:
    if name.startswith(config.fail_prefix):
        return f"simulated failure: VM names starting with {config.fail_prefix!r} fail"
    if vm_id.int % 100 < config.failure_percent:
        return f"simulated failure: {config.failure_percent}% of creates fail (chosen by vm_id)"
    return None


def _event(command: Envelope, model: type[Envelope], delay_s: int, tag: str = "",
           **fields: Any) -> VmEvent:
    event: VmEvent = command.caused(
        model, event_id=deterministic_id("vcenter-simulator", model.__name__, command.event_id,
                                         tag),
        occurred_at=command.occurred_at + timedelta(seconds=delay_s), **fields)
    return event


def respond(command: CreateVm | ResizeVm | PowerOffVm | PowerOnVm | DeleteVm,
            config: SimulatorConfig) -> list[VmEvent]:
    """The events vCenter reports for one command, in the order they happen."""
    match command:
        case CreateVm(vm_id=vm_id, request_id=request_id, name=name):
            if name.startswith(config.silent_prefix):
                return []
            failure = create_failure(vm_id, name, config)
            if failure is not None:
                return [_event(command, VmCreateFailed, config.create_delay_s, vm_id=vm_id,
                               request_id=request_id, reason=failure)]
            return [
                _event(command, VmCreated, config.create_delay_s, vm_id=vm_id,
                       request_id=request_id, organisation_id=command.organisation_id,
                       wallet_id=command.wallet_id, spec=command.spec),
                _event(command, VmPoweredOn, config.create_delay_s + config.power_on_delay_s,
                       vm_id=vm_id),
            ]
        case ResizeVm(vm_id=vm_id, request_id=request_id, spec=spec):
            if spec.vcpu > config.max_vcpu:
                return [_event(command, VmResizeFailed, config.resize_delay_s, vm_id=vm_id,
                               request_id=request_id,
                               reason=f"simulated failure: hosts have at most "
                                      f"{config.max_vcpu} vCPU")]
            return [_event(command, VmResized, config.resize_delay_s, vm_id=vm_id,
                           request_id=request_id, spec=spec)]
        case PowerOffVm(vm_id=vm_id):
            return [_event(command, VmPoweredOff, config.power_delay_s, vm_id=vm_id)]
        case PowerOnVm(vm_id=vm_id):
            return [_event(command, VmPoweredOn, config.power_delay_s, vm_id=vm_id)]
        case DeleteVm(vm_id=vm_id):
            return [_event(command, VmDeleted, config.delete_delay_s, vm_id=vm_id)]
    raise AssertionError(f"unhandled command {command!r}")
