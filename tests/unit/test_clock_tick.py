"""A clock tick far from the wall clock is an invalid message: consumers' clocks only move
forward, so one tick in the year 9999 would time out every saga and close every hour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from shared.contracts.clock import MAX_CLOCK_SKEW, ClockTick


@pytest.mark.parametrize("at", [datetime(9999, 12, 31, tzinfo=UTC),
                                datetime(1970, 1, 1, tzinfo=UTC)])
def test_a_tick_far_from_now_is_refused(at: datetime) -> None:
    with pytest.raises(ValidationError, match="within 3653 days of the wall clock"):
        ClockTick.at_time(at)


@pytest.mark.parametrize("offset", [timedelta(0), timedelta(days=430), -timedelta(days=2500),
                                    MAX_CLOCK_SKEW - timedelta(days=1)])
def test_event_time_ahead_of_or_behind_the_wall_clock_is_a_tick(offset: timedelta) -> None:
    at = (datetime.now(UTC) + offset).replace(microsecond=0)
    assert ClockTick.at_time(at).at == at
