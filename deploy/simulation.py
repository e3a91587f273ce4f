"""The main job: JSE-listed companies over months of business, simulated in event time
through the real services, and proved to the cent by an independent oracle.

1. `deploy/sim/scenario.py` generates the seeded scenario (companies, habits, actions).
2. `deploy/sim/oracle.py` computes, from the scenario alone, what everything must come to.
3. `deploy/sim/driver.py` plays it through the services' HTTP APIs, vCenter hook events and
   clock ticks, with a progress bar.
4. `deploy/sim/compare.py` reads what the services report and names every difference (the
   company and the month); `deploy/sim/report.py` writes the report folder and its plots.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from deploy.sim.compare import Difference, collect, compare
from deploy.sim.driver import Driver
from deploy.sim.oracle import Oracle
from deploy.sim.report import write_report
from deploy.sim.scenario import Scenario, generate, rate_cards_of_run
from deploy.sim.system import Portal, stop_within
from shared.settings import Settings


@dataclass(frozen=True)
class Size:
    companies: int
    days: int


SIZES = {
    "test": Size(companies=12, days=62),  # two months
    # every profile and scenario (winter, Black Friday, the rate card change), about 5 minutes
    "demo": Size(companies=24, days=184),
    "full": Size(companies=1000, days=184),  # every company in the file, six months
}
DEFAULT_START = datetime(2026, 7, 1, tzinfo=UTC)  # winter, Black Friday and December


@dataclass
class Outcome:
    scenario: Scenario
    differences: list[Difference]
    usage_events: int
    wall_s: float
    report_dir: Path | None
    timings: dict[str, float]

    @property
    def exact(self) -> bool:
        return not self.differences


async def run_simulation(settings: Settings, urls: dict[str, str], *, seed: int = 14,
                         start: datetime = DEFAULT_START, days: int, companies: int,
                         report_dir: Path | None = None, progress: bool = True,
                         patience_s: float = 0.0,
                         after_day: Callable[[datetime], Awaitable[None] | None] | None = None,
                         requests_sent: Counter[str] | None = None) -> Outcome:
    """Runs the scenario. `patience_s`: how long each HTTP call keeps trying while a service
    is down (a fault-injection run); `after_day(sync point)` is called once the system is
    quiet after each simulated day (a benchmark samples its processes there, the chaos run
    injects its faults); the next day waits for the awaitable it may return.
    `requests_sent`: counts the HTTP requests sent to each service, as they go."""
    scenario = generate(seed, start, days, companies)
    expected = Oracle(scenario).run()
    print(f"scenario: {len(scenario.companies)} companies, {scenario.start:%Y-%m-%d} to "
          f"{scenario.end:%Y-%m-%d} ({days} days), seed {seed}; the oracle expects "
          f"{expected.usage_events:,} usage events")
    portal = await Portal.signed_in(urls, settings)
    portal.patience_s = patience_s
    if requests_sent is not None:
        portal.requests_sent = requests_sent
    await check_rate_cards(portal, scenario)
    bar = tqdm(total=days, unit="day", disable=not progress, dynamic_ncols=True)
    began = time.monotonic()
    usage_so_far = 0

    def on_day(at: datetime, refused: int) -> Awaitable[None] | None:
        nonlocal usage_so_far
        usage_so_far += expected.usage_by_day.get(at.date(), 0)
        rate = usage_so_far / max(time.monotonic() - began, 1e-9)
        bar.set_postfix_str(f"{at:%Y-%m-%d} usage {rate:,.0f}/s refused {refused}")
        bar.update(1)
        return after_day(at) if after_day is not None else None

    try:
        seen = await Driver(scenario, settings, portal, on_day).run()
        bar.close()
        wall_s = time.monotonic() - began
        reported = await collect(scenario, seen, portal)
    finally:
        bar.close()
        await stop_within(portal.close())
    differences = compare(scenario, expected, seen, reported)
    if report_dir is not None:
        write_report(report_dir, scenario, expected, seen, reported, differences)
    return Outcome(scenario, differences, expected.usage_events, wall_s, report_dir,
                   seen.timings)


def simulation_settings(settings: Settings, start: datetime, days: int) -> Settings:
    """What the services of a simulation run with: clock ticks as the one clock, and the
    scenario's rate cards (the ZAR change within the run, the USD card)."""
    return settings.model_copy(update={
        "event_clock": "ticks", "rate_cards": json.dumps(rate_cards_of_run(start, days))})


async def check_rate_cards(portal: Portal, scenario: Scenario) -> None:
    response = await portal.call("GET", "provisioning", "/rate-cards")
    response.raise_for_status()
    versions = {card["version"] for card in response.json()}
    missing = [c["version"] for c in scenario.rate_cards if c["version"] not in versions]
    if missing:
        raise RuntimeError(f"the services were not started with the scenario's rate cards "
                           f"{missing}: start them with simulation_settings(...)")


def print_outcome(outcome: Outcome, shown: int = 25) -> None:
    print(f"\nsimulated {len(outcome.scenario.companies)} companies over "
          f"{len(outcome.scenario.months())} closed months in {outcome.wall_s:.0f} s: "
          f"{outcome.usage_events:,} usage events, "
          f"{outcome.usage_events / max(outcome.wall_s, 1e-9):,.0f} per second")
    print("where the time went: " + ", ".join(
        f"{phase} {seconds:.0f} s" for phase, seconds in
        sorted(outcome.timings.items(), key=lambda p: -p[1])))
    if outcome.report_dir is not None:
        print(f"report: {outcome.report_dir}/report.md (data: report.json, plots: *.png)")
    if outcome.exact:
        print("oracle: exact (every balance, statement, VM month, invoice, request and refund "
              "agrees to the cent)")
        return
    print(f"oracle: {len(outcome.differences)} differences")
    for difference in outcome.differences[:shown]:
        print(f"  {difference}")
