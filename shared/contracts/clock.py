"""The event-time clock. Hours, holds, timeouts and months end when a tick says so."""

from __future__ import annotations

from datetime import UTC
from typing import Literal
from uuid import UUID

from pydantic import AwareDatetime, Field

from shared.contracts.base import Envelope, UtcDatetime, deterministic_id


class ClockTick(Envelope):
    """Event time has reached `at`. Written to `clock.ticks` and to every partition of
    `vcenter.events`, so each partition's consumer sees it in order with the VM events."""

    type: Literal["clock.tick"] = "clock.tick"
    version: Literal[1] = 1
    at: UtcDatetime

    @classmethod
    def at_time(cls, at: AwareDatetime) -> ClockTick:
        return cls(event_id=tick_id(at), at=at, occurred_at=at)


def tick_id(at: AwareDatetime) -> UUID:
    return deterministic_id("clock.tick", at.astimezone(UTC).isoformat())


__all__ = ["ClockTick", "Field", "tick_id"]
