"""The fault-injection run's plan (deploy/chaos_plan.py): seeded, covering every service
and every kind of fault, spread over the simulated days without the first and the last."""

import pytest

from deploy.chaos_plan import BROKER, POSTGRES, instances_of, plan

PROCESSES = [f"{service}{suffix}" for service in
             ("wallet", "provisioning", "metering", "billing", "vcenter-simulator")
             for suffix in ("", "#2")]


def test_the_same_seed_gives_the_same_plan_and_another_seed_another():
    assert plan(17, PROCESSES, 30, 12) == plan(17, PROCESSES, 30, 12)
    assert plan(17, PROCESSES, 30, 12) != plan(18, PROCESSES, 30, 12)


@pytest.mark.parametrize("seed", range(20))
def test_every_service_is_killed_and_every_outage_comes_once(seed):
    faults = plan(seed, PROCESSES, 30, 8 + seed % 5)
    assert len(faults) == 8 + seed % 5
    killed = {f.target.partition("#")[0] for f in faults if f.kind == "kill"}
    assert killed == set(instances_of(PROCESSES))
    assert [f.target for f in faults if f.kind == "broker"] == [BROKER]
    assert [f.target for f in faults if f.kind == "postgres"] == [POSTGRES]
    paused = [f.target for f in faults if f.kind == "pause"]
    assert len(paused) == 1 and paused[0] in PROCESSES
    assert all(f.target in PROCESSES for f in faults if f.kind == "kill")


@pytest.mark.parametrize("days", [3, 10, 75])
def test_faults_come_in_order_after_the_first_day_and_before_the_last(days):
    days_of = [f.after_day for f in plan(3, PROCESSES, days, 10)]
    assert days_of == sorted(days_of)
    assert days_of[0] >= 1 and days_of[-1] <= days - 1


def test_too_few_faults_or_days_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="at least 8 faults"):
        plan(1, PROCESSES, 30, 7)
    with pytest.raises(ValueError, match="at least 3 days"):
        plan(1, PROCESSES, 2, 8)


def test_instances_are_grouped_by_service():
    assert instances_of(["wallet", "wallet#2", "billing"]) == {
        "wallet": ["wallet", "wallet#2"], "billing": ["billing"]}
