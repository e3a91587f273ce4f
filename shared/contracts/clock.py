"""The event-time clock. Hours, holds, timeouts and months end when a tick says so."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal
from uuid import UUID

from pydantic import AwareDatetime, Field, field_validator

from shared.contracts.base import (
    MAX_CLOCK_SKEW,
    Envelope,
    UtcDatetime,
    deterministic_id,
    utcnow,
)

# A tick further than MAX_CLOCK_SKEW from the wall clock is a mistake that no later tick
# undoes: consumers' clocks only move forward, so a tick in the year 9999 would time out
# every saga and close every hour from then on.


class ClockTick(Envelope):
    """Event time has reached `at`. Written to `clock.ticks` and to every partition of
    `vcenter.events`, so each partition's consumer sees it in order with the VM events."""

    type: Literal["clock.tick"] = "clock.tick"
    version: Literal[1] = 1
    at: UtcDatetime

    @field_validator("at")
    @classmethod
    def _near_the_wall_clock(cls, at: datetime) -> datetime:
        if abs(at - utcnow()) > MAX_CLOCK_SKEW:
            raise ValueError(f"a tick must be within {MAX_CLOCK_SKEW.days} days of the wall "
                             "clock")
        return at

    @classmethod
    def at_time(cls, at: AwareDatetime) -> ClockTick:
        return cls(event_id=tick_id(at), at=at, occurred_at=at)


def tick_id(at: AwareDatetime) -> UUID:
    return deterministic_id("clock.tick", at.astimezone(UTC).isoformat())


__all__ = ["ClockTick", "Field", "tick_id"]
