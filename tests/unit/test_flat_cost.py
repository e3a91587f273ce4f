"""The simulation benchmark's flat-cost figures (bench/flat_cost.py): the last month over the
first, per usage event and per unit of a service's own work (records in and HTTP requests),
and how a service's work per usage event changed."""

from __future__ import annotations

from datetime import date
from typing import Any

from bench.flat_cost import CostMeter, Month

JULY, DECEMBER = date(2026, 7, 1), date(2026, 12, 1)


def meter(**months: Month) -> CostMeter:
    cost = CostMeter({}, 0.0)
    processes: dict[str, Any] = {"provisioning": None}
    cost.processes = processes
    cost.months = {JULY: months["july"], DECEMBER: months["december"]}
    return cost


def test_a_service_whose_work_per_usage_event_grew_is_flat_per_unit_of_its_work():
    cost = meter(
        july=Month(wall_s=40, cpu_s={"provisioning": 20.0}, usage_events=200_000,
                   inputs={"provisioning": 19_000}, requests={"provisioning": 1_000}),
        december=Month(wall_s=40, cpu_s={"provisioning": 12.0}, usage_events=100_000,
                       inputs={"provisioning": 11_500}, requests={"provisioning": 500}))
    assert round(cost.ratios()["provisioning"], 3) == 1.2  # per usage event: OVER
    assert round(cost.ratios(per_input=True)["provisioning"], 3) == 1.0  # per unit of work
    assert round(cost.ratios()["wall per event"], 3) == 2.0  # half the events, same wall
    report = "\n".join(cost.report())
    assert "provisioning       1.200 OVER  (its work per usage event: 1.200x)" in report
    assert "provisioning=11,500+500/1.000" in report


def test_services_with_too_little_cpu_or_work_are_left_out():
    cost = meter(july=Month(cpu_s={"provisioning": 0.01}, usage_events=10, inputs={}),
                 december=Month(cpu_s={"provisioning": 0.01}, usage_events=10, inputs={}))
    assert "provisioning" not in cost.ratios(per_input=True)


def test_running_totals_after_each_day_go_to_the_month_of_the_day_that_ended():
    from datetime import UTC, datetime

    cost = CostMeter({}, 0.0)
    cost.inputs_seen(datetime(2026, 7, 31, tzinfo=UTC), {"wallet": 100})
    cost.inputs_seen(datetime(2026, 8, 1, tzinfo=UTC), {"wallet": 130})  # ends July 31
    cost.inputs_seen(datetime(2026, 8, 2, tzinfo=UTC), {"wallet": 180})
    cost.requests_seen(datetime(2026, 8, 2, tzinfo=UTC), {"wallet": 7})
    assert cost.months[JULY].inputs == {"wallet": 130}
    assert cost.months[date(2026, 8, 1)].inputs == {"wallet": 50}
    assert cost.months[date(2026, 8, 1)].requests == {"wallet": 7}
    assert cost.months[date(2026, 8, 1)].work("wallet") == 57
