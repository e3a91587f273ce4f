"""The vCenter hooks contract: commands to vCenter and the VM events it reports.

A real vCenter hook publishes these events to `vcenter.events`, keyed by `vm_id`, with
`occurred_at` set to when the change happened in vCenter (event time).
"""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field

from shared.contracts.base import Envelope, StorableText
from shared.contracts.clock import ClockTick
from shared.contracts.vm import VmSpec

# --- vcenter.commands ----------------------------------------------------------------------


class CreateVm(Envelope):
    type: Literal["vcenter.create_vm"] = "vcenter.create_vm"
    version: Literal[1] = 1
    vm_id: UUID
    request_id: UUID
    organisation_id: UUID
    wallet_id: UUID
    name: StorableText = Field(min_length=1, max_length=80)
    spec: VmSpec


class ResizeVm(Envelope):
    type: Literal["vcenter.resize_vm"] = "vcenter.resize_vm"
    version: Literal[1] = 1
    vm_id: UUID
    request_id: UUID
    spec: VmSpec


class PowerOffVm(Envelope):
    type: Literal["vcenter.power_off_vm"] = "vcenter.power_off_vm"
    version: Literal[1] = 1
    vm_id: UUID
    reason: Literal["suspended_for_funds", "customer"] = "suspended_for_funds"


class PowerOnVm(Envelope):
    type: Literal["vcenter.power_on_vm"] = "vcenter.power_on_vm"
    version: Literal[1] = 1
    vm_id: UUID
    reason: Literal["funds_restored", "customer"] = "funds_restored"


class DeleteVm(Envelope):
    type: Literal["vcenter.delete_vm"] = "vcenter.delete_vm"
    version: Literal[1] = 1
    vm_id: UUID


VcenterCommand = Annotated[
    CreateVm | ResizeVm | PowerOffVm | PowerOnVm | DeleteVm, Field(discriminator="type")
]

# --- vcenter.events ------------------------------------------------------------------------


class VmCreated(Envelope):
    """The VM exists (powered off until a VmPoweredOn follows)."""

    type: Literal["vcenter.vm_created"] = "vcenter.vm_created"
    version: Literal[1] = 1
    vm_id: UUID
    request_id: UUID | None = None
    organisation_id: UUID
    wallet_id: UUID
    spec: VmSpec


class VmCreateFailed(Envelope):
    type: Literal["vcenter.vm_create_failed"] = "vcenter.vm_create_failed"
    version: Literal[1] = 1
    vm_id: UUID
    request_id: UUID | None = None
    reason: StorableText


class VmPoweredOn(Envelope):
    type: Literal["vcenter.vm_powered_on"] = "vcenter.vm_powered_on"
    version: Literal[1] = 1
    vm_id: UUID


class VmPoweredOff(Envelope):
    type: Literal["vcenter.vm_powered_off"] = "vcenter.vm_powered_off"
    version: Literal[1] = 1
    vm_id: UUID


class VmResized(Envelope):
    type: Literal["vcenter.vm_resized"] = "vcenter.vm_resized"
    version: Literal[1] = 1
    vm_id: UUID
    request_id: UUID | None = None
    spec: VmSpec


class VmResizeFailed(Envelope):
    type: Literal["vcenter.vm_resize_failed"] = "vcenter.vm_resize_failed"
    version: Literal[1] = 1
    vm_id: UUID
    request_id: UUID | None = None
    reason: StorableText


class VmSuspended(Envelope):
    type: Literal["vcenter.vm_suspended"] = "vcenter.vm_suspended"
    version: Literal[1] = 1
    vm_id: UUID


class VmResumed(Envelope):
    type: Literal["vcenter.vm_resumed"] = "vcenter.vm_resumed"
    version: Literal[1] = 1
    vm_id: UUID


class VmDeleted(Envelope):
    type: Literal["vcenter.vm_deleted"] = "vcenter.vm_deleted"
    version: Literal[1] = 1
    vm_id: UUID


VmEvent = (
    VmCreated
    | VmCreateFailed
    | VmPoweredOn
    | VmPoweredOff
    | VmResized
    | VmResizeFailed
    | VmSuspended
    | VmResumed
    | VmDeleted
)
# What a consumer of `vcenter.events` reads: VM events, and clock ticks between them.
VcenterStreamItem = Annotated[VmEvent | ClockTick, Field(discriminator="type")]
