"""The vCenter simulator's answers: realistic, delayed in event time, and deterministic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from hypothesis import given
from hypothesis import strategies as st

from services.vcenter_simulator.domain import SimulatorConfig, create_failure, respond
from shared.contracts.vcenter import (
    CreateVm,
    DeleteVm,
    PowerOffVm,
    PowerOnVm,
    ResizeVm,
    VmCreated,
    VmCreateFailed,
    VmDeleted,
    VmPoweredOff,
    VmPoweredOn,
    VmResized,
    VmResizeFailed,
)
from shared.contracts.vm import VmSpec

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CONFIG = SimulatorConfig()


def create_vm(name: str = "web", vm_id: UUID | None = None) -> CreateVm:
    return CreateVm(vm_id=vm_id or uuid4(), request_id=uuid4(), organisation_id=uuid4(),
                    wallet_id=uuid4(), name=name, spec=VmSpec.of_tier("small"), occurred_at=T0,
                    correlation_id=uuid4())


def test_create_reports_created_after_the_delay_then_powered_on():
    command = create_vm()
    created, powered_on = respond(command, CONFIG)
    assert isinstance(created, VmCreated) and isinstance(powered_on, VmPoweredOn)
    assert created.occurred_at == T0 + timedelta(seconds=CONFIG.create_delay_s)
    assert powered_on.occurred_at == created.occurred_at + timedelta(
        seconds=CONFIG.power_on_delay_s)
    assert (created.vm_id, created.request_id, created.wallet_id, created.spec) == (
        command.vm_id, command.request_id, command.wallet_id, command.spec)
    assert created.causation_id == command.event_id
    assert created.correlation_id == command.correlation_id


def test_a_redelivered_command_yields_identical_events():
    command = create_vm()
    assert respond(command, CONFIG) == respond(command, CONFIG)
    ids = [e.event_id for e in respond(command, CONFIG)]
    assert len(set(ids)) == 2


def test_names_decide_failure_and_silence():
    (failed,) = respond(create_vm("fail-db"), CONFIG)
    assert isinstance(failed, VmCreateFailed) and "fail-" in failed.reason
    assert respond(create_vm("hang-db"), CONFIG) == []


@given(st.uuids())
def test_failure_share_is_chosen_by_vm_id(vm_id):
    assert create_failure(vm_id, "web", SimulatorConfig(failure_percent=0)) is None
    assert create_failure(vm_id, "web", SimulatorConfig(failure_percent=100)) is not None
    half = SimulatorConfig(failure_percent=50)
    assert (create_failure(vm_id, "web", half) is None) == (vm_id.int % 100 >= 50)


def test_power_resize_and_delete_commands():
    vm_id = uuid4()
    (off,) = respond(PowerOffVm(vm_id=vm_id, occurred_at=T0), CONFIG)
    (on,) = respond(PowerOnVm(vm_id=vm_id, occurred_at=T0), CONFIG)
    (deleted,) = respond(DeleteVm(vm_id=vm_id, occurred_at=T0), CONFIG)
    assert isinstance(off, VmPoweredOff) and isinstance(on, VmPoweredOn)
    assert isinstance(deleted, VmDeleted)
    assert off.occurred_at == T0 + timedelta(seconds=CONFIG.power_delay_s)
    request_id = uuid4()
    (resized,) = respond(ResizeVm(vm_id=vm_id, request_id=request_id,
                                  spec=VmSpec.of_tier("large"), occurred_at=T0), CONFIG)
    assert isinstance(resized, VmResized) and resized.spec.tier == "large"
    assert resized.request_id == request_id
    too_big = ResizeVm(vm_id=vm_id, request_id=request_id, spec=VmSpec(vcpu=100, ram_gb=64),
                       occurred_at=T0)
    (refused,) = respond(too_big, CONFIG)
    assert isinstance(refused, VmResizeFailed) and "64 vCPU" in refused.reason
