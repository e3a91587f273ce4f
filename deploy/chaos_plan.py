"""The fault-injection run's plan, pure: which fault comes after which simulated day, drawn
from a seed so the same seed injects the same faults in the same order.

Every service type is killed at least once (the first kills go round them in a seeded
order), the broker and PostgreSQL are restarted once each, one instance is paused past its
consumer session timeout, and further kills fill up to the number of faults asked for. The
faults are spread evenly over the simulated days, leaving the first day (the opening) and
the last one alone."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

FaultKind = Literal["kill", "broker", "postgres", "pause"]

BROKER = "kafka"
POSTGRES = "postgresql"


@dataclass(frozen=True)
class Fault:
    after_day: int  # injected once this many simulated days are done
    kind: FaultKind
    target: str  # a process name (`wallet`, `wallet#2`), or the broker or PostgreSQL

    def __str__(self) -> str:
        what = {"kill": "SIGKILL and restart", "broker": "restart", "postgres": "restart",
                "pause": "SIGSTOP, then SIGCONT"}[self.kind]
        return f"{what} {self.target}"


def instances_of(processes: list[str]) -> dict[str, list[str]]:
    """Process names by service (`wallet` -> [`wallet`, `wallet#2`])."""
    by_service: dict[str, list[str]] = {}
    for name in processes:
        by_service.setdefault(name.partition("#")[0], []).append(name)
    return by_service


def plan(seed: int, processes: list[str], days: int, faults: int) -> list[Fault]:
    """`processes`: the instances that may be killed or paused; `faults`: at least one kill
    per service plus the broker restart, the PostgreSQL restart and the pause."""
    rng = random.Random(seed)
    by_service = instances_of(processes)
    services = sorted(by_service)
    needed = len(services) + 3
    if faults < needed:
        raise ValueError(f"at least {needed} faults: a kill per service ({len(services)}), "
                         "a broker restart, a PostgreSQL restart and a pause")
    if days < 3:
        raise ValueError("at least 3 days: the opening day and the last stay without faults")
    rng.shuffle(services)
    kills = [("kill", rng.choice(by_service[s])) for s in services]
    kills += [("kill", rng.choice(processes)) for _ in range(faults - needed)]
    order: list[tuple[FaultKind, str]] = list(kills)  # type: ignore[arg-type]
    # The outages between kills, so every kind meets a system busy with earlier recoveries.
    order.insert(min(2, len(order)), ("broker", BROKER))
    order.insert(min(len(order) // 2, len(order)), ("pause", rng.choice(processes)))
    order.insert(len(order) * 3 // 4, ("postgres", POSTGRES))
    usable = days - 2  # after day 1 .. after day days-1
    return [Fault(after_day=1 + (i * usable) // len(order), kind=kind, target=target)
            for i, (kind, target) in enumerate(order)]
