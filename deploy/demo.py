"""`cloudwallet demo`: the simulation, run through the services started by the launcher."""

from __future__ import annotations

from deploy.launcher import RunningSystem
from deploy.simulation import Simulation


async def run_demo(system: RunningSystem, days: int = 35) -> bool:
    urls = {name: system.url(name) for name in system.processes}
    return await Simulation(system.settings, urls, days).run()
