"""Hourly usage from metering."""

from __future__ import annotations

from datetime import UTC
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.contracts.base import Envelope, EventTime, UtcDatetime, deterministic_id
from shared.contracts.vm import VmSpec


class UsageSegment(BaseModel):
    """Seconds a VM ran at one size within the hour."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec: VmSpec
    seconds: int = Field(ge=0, le=3600)


class HourlyUsage(Envelope):
    """A VM's usage for one hour. `revision` 0 is the first statement of the hour; a late or
    out-of-order event restates the whole hour with a higher revision, which supersedes the
    earlier ones (the consumer bills the difference, never the sum)."""

    type: Literal["metering.hourly_usage"] = "metering.hourly_usage"
    version: Literal[1] = 1
    usage_id: UUID
    vm_id: UUID
    wallet_id: UUID
    organisation_id: UUID
    hour_start: EventTime
    revision: int = Field(ge=0, le=2**31 - 1)  # stored as integer
    seconds: int = Field(ge=0, le=3600)
    segments: list[UsageSegment]


def usage_id(vm_id: UUID, hour_start: AwareDatetime, revision: int) -> UUID:
    return deterministic_id("metering.hourly_usage", vm_id, hour_start.astimezone(UTC).isoformat(),
                            revision)


class MeteringWatermark(Envelope):
    """Metering has closed every hour ending at or before `up_to` for the VMs of one
    `vcenter.events` partition. Written to every partition of `metering.usage`."""

    type: Literal["metering.watermark"] = "metering.watermark"
    version: Literal[1] = 1
    source_partition: int = Field(ge=0)
    up_to: UtcDatetime


UsageStreamItem = Annotated[HourlyUsage | MeteringWatermark, Field(discriminator="type")]
