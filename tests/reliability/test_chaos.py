"""The fault-injection run, small (`./run chaos` is the medium one): a few companies for a
few weeks on its own Kafka broker and PostgreSQL server (never the team's shared ones), two
instances of every consuming service, each service type SIGKILLed and restarted at least
once, the broker and PostgreSQL restarted, an instance paused past its session timeout.
The oracle must still agree to the cent and nothing may be lost or booked twice."""

from __future__ import annotations

import pytest

from deploy.chaos import print_result, run_chaos
from deploy.chaos_plan import instances_of
from shared.settings import Settings

pytestmark = pytest.mark.e2e

SERVICES = {"wallet", "provisioning", "metering", "billing", "vcenter-simulator"}


def test_faults_lose_nothing_and_book_nothing_twice(tmp_path, capsys):
    result = run_chaos(Settings(), tmp_path / "chaos", companies=3, days=21, seed=17,
                       faults=8, progress=False)
    print_result(result)
    printed = capsys.readouterr().out.strip()
    last = printed.splitlines()[-1]
    with capsys.disabled():  # the whole account when it failed, so CI's log says why
        print(f"\n{last}" if result.passed else f"\n{printed}")

    kinds = [i.fault.kind for i in result.injected]
    killed = {i.fault.target for i in result.injected if i.fault.kind == "kill"}
    assert set(instances_of(sorted(killed))) == SERVICES  # every service type killed
    assert kinds.count("broker") == 1 and kinds.count("postgres") == 1
    assert kinds.count("pause") == 1
    assert all(i.recovery_s is not None for i in result.injected)
    assert sum(i.during_workload for i in result.injected) >= 6  # faults met real work

    assert last == "faults=8 lost=0 duplicated=0 oracle=exact"
    assert [str(d) for d in result.outcome.differences] == []
    verdict = result.verdict
    assert verdict.kinds["usage_debit"].expected > 1_000
    assert {kind: (c.booked, c.lost, c.duplicated) for kind, c in verdict.kinds.items()} == {
        kind: (c.expected, 0, 0) for kind, c in verdict.kinds.items()}
    assert verdict.unfinished_requests == 0 and verdict.orphan_holds == 0
    assert result.passed
