"""What "now" is for something that happens without an event time of its own (an HTTP call:
a VM request, a resize, a refund, an organisation opened).

Services keep the latest clock tick they saw. In production (`EVENT_CLOCK=wall`, the
default) ticks follow the wall clock, and now is the later of the two, as it always was. A
simulation (`EVENT_CLOCK=ticks`) drives the whole system by ticks over months in the past or
the future: there the last tick is the one clock, so nothing it causes is stamped with
today's date. Before the first tick, the wall clock is all there is.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

EventClock = Literal["wall", "ticks"]


def event_time_now(clock: datetime | None, wall: datetime, mode: EventClock = "wall") -> datetime:
    if clock is None:
        return wall
    return clock if mode == "ticks" else max(clock, wall)
