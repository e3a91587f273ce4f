"""`cloudwallet demo`: the simulation, run through the services started by the launcher."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from deploy.launcher import RunningSystem
from deploy.simulation import DEFAULT_START, SIZES, Outcome, print_outcome, run_simulation


async def run_demo(system: RunningSystem, *, size: str = "demo", days: int | None = None,
                   companies: int | None = None, seed: int = 14,
                   start: datetime = DEFAULT_START, report_dir: Path | None = None) -> Outcome:
    preset = SIZES[size]
    urls = {name: system.url(name) for name in system.processes}
    outcome = await run_simulation(
        system.settings, urls, seed=seed, start=start, days=days or preset.days,
        companies=companies or preset.companies, report_dir=report_dir)
    print_outcome(outcome)
    return outcome
