"""`cloudwallet chaos`: the simulation under faults, judged by its oracle.

Its own Kafka broker and PostgreSQL server (durable, on free ports: never the team's), two
instances of every consuming service in one consumer group, and a fault driver on a thread
that follows the plan of deploy/chaos_plan.py: after given simulated days it SIGKILLs an
instance and starts it again (as a supervisor would), restarts the broker and PostgreSQL,
and pauses an instance (SIGSTOP) past its consumer session timeout. The simulation keeps
going through it all; its HTTP calls wait for a service to come back (`patience_s`).

A fault's **recovery time**: from the fault (for a pause, from SIGCONT) until every process
answers `/health` with 200 again (its Kafka client reaches the broker and its database
pool answers). At the end the money must agree with the oracle to the cent, and the judge
(`deploy/chaos_judge.py`) counts what was lost or booked twice.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import shutil
import signal
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
from tqdm import tqdm

from deploy.chaos_judge import Verdict, judge
from deploy.chaos_plan import Fault, plan
from deploy.launcher import RunningSystem, start_system
from deploy.processes import free_port
from deploy.simulation import DEFAULT_START, Outcome, run_simulation, simulation_settings
from shared.settings import Settings

# aiokafka's default consumer session timeout (shared/consumer.py keeps it): a member
# silent this long leaves the group, which then rebalances.
SESSION_TIMEOUT_S = 10.0
PAUSE_S = SESSION_TIMEOUT_S + 5.0
RECOVERY_TIMEOUT_S = 180.0


@dataclass
class Injected:
    fault: Fault
    at_s: float  # wall seconds since the workload began
    simulated_day: str
    recovery_s: float | None  # None: not recovered within RECOVERY_TIMEOUT_S
    during_workload: bool
    started: float = 0.0  # monotonic, when the fault began
    resumed_s: float | None = None  # from the fault until the simulation finished a day


@dataclass
class ChaosResult:
    outcome: Outcome
    injected: list[Injected]
    verdict: Verdict
    self_exits: list[tuple[float, str]]  # processes that exited by themselves (restarted)
    peak_memory_kb: dict[str, int]
    wall_s: float

    @property
    def faults(self) -> int:
        return len(self.injected)

    @property
    def passed(self) -> bool:
        return (self.outcome.exact and self.verdict.lost == 0 and self.verdict.duplicated == 0
                and self.verdict.clean and all(i.recovery_s is not None for i in self.injected))

    def last_line(self) -> str:
        return (f"faults={self.faults} lost={self.verdict.lost} "
                f"duplicated={self.verdict.duplicated} "
                f"oracle={'exact' if self.outcome.exact else 'differs'}")


@dataclass
class FaultDriver:
    """Injects the plan's faults on its own thread, one after the other, each once its day
    is done; supervises the processes meanwhile (one that exits is started again)."""

    system: RunningSystem
    faults: list[Fault]
    began: float = field(default_factory=time.monotonic)
    injected: list[Injected] = field(default_factory=list)
    self_exits: list[tuple[float, str]] = field(default_factory=list)
    peak_memory_kb: dict[str, int] = field(default_factory=dict)
    workload_done: bool = False
    _due: queue.Queue[tuple[Fault, str] | None] = field(default_factory=queue.Queue)
    _days: int = 0
    _next: int = 0
    _current: Injected | None = None  # the fault being injected

    def __post_init__(self) -> None:
        self._done = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults", daemon=True)
        self._thread.start()

    def day_done(self, at: datetime) -> Awaitable[None]:
        """The simulation's `after_day`: note the work resumed after the faults before it,
        queue the faults due after this day, and hold the next day back until the driver has
        begun every one of them: on a fast machine the workload would otherwise outrun the
        faults, and the late ones would meet an idle system."""
        now = time.monotonic()
        for injected in list(self.injected) + ([self._current] if self._current else []):
            if injected.resumed_s is None and injected.started < now:
                injected.resumed_s = now - injected.started
        self._days += 1
        while self._next < len(self.faults) and self.faults[self._next].after_day <= self._days:
            self._due.put((self.faults[self._next], f"{at:%Y-%m-%d}"))
            self._next += 1
        return self._all_begun()

    async def _all_begun(self) -> None:
        while not self._due.empty() and self._thread.is_alive():
            await asyncio.sleep(0.1)  # the event loop goes on: the simulation's consumers too

    def finish(self) -> None:
        """After the workload: the faults not injected yet still are, then all recover."""
        self.workload_done = True
        for fault in self.faults[self._next:]:
            self._due.put((fault, "after the last day"))
        self._next = len(self.faults)
        self._due.put(None)
        self._done.wait()
        self._sample_memory()

    def close(self) -> None:
        """Once the processes it started are stopped: its thread may end. Not before: the
        processes it restarted die with the thread that started them (PR_SET_PDEATHSIG
        follows the thread, not the process)."""
        self._release.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            while (item := self._due.get()) is not None:
                fault, day = item
                at_s = time.monotonic() - self.began
                during = not self.workload_done
                tqdm.write(f"fault at {at_s:.0f} s (simulated {day}): {fault}")
                self._current = Injected(fault, at_s, day, None, during, time.monotonic())
                recovery = self._current.recovery_s = self._inject(fault)
                self.injected.append(self._current)
                self._current = None
                shown = f"{recovery:.1f} s" if recovery is not None else "not recovered"
                tqdm.write(f"  recovered in {shown}")
        finally:
            self._done.set()
            self._release.wait()

    def _inject(self, fault: Fault) -> float | None:
        system, stack = self.system, self.system.stack
        assert stack is not None, "a chaos run starts its own servers"
        self._sample_memory()
        started = time.monotonic()
        if fault.kind == "kill":
            process = system.processes[fault.target]
            process.send_signal(signal.SIGKILL)
            process.wait()
            system.restart(fault.target)
        elif fault.kind == "broker":
            stack.kafka.stop()
            stack.kafka.start()
        elif fault.kind == "postgres":
            stack.postgres.stop()  # SIGINT: PostgreSQL's fast shutdown, clients cut off
            stack.postgres.start()
        else:
            process = system.processes[fault.target]
            process.send_signal(signal.SIGSTOP)
            time.sleep(PAUSE_S)
            process.send_signal(signal.SIGCONT)
            started = time.monotonic()
        return self._recovered(started)

    def _recovered(self, started: float) -> float | None:
        deadline = started + RECOVERY_TIMEOUT_S
        with httpx.Client(timeout=2) as http:
            while time.monotonic() < deadline:
                if all(self._healthy(http, name) for name in list(self.system.processes)):
                    return time.monotonic() - started
                time.sleep(0.2)
        return None

    def _healthy(self, http: httpx.Client, name: str) -> bool:
        if self.system.processes[name].poll() is not None:
            # A supervisor's work: a process that gave up is started again (and counted).
            self.self_exits.append((time.monotonic() - self.began, name))
            tqdm.write(f"  {name} exited by itself; started again")
            self.system.restart(name)
            return False
        try:
            return http.get(f"{self.system.url(name)}/health").status_code == 200
        except httpx.HTTPError:
            return False

    def _sample_memory(self) -> None:
        """Each process's peak resident memory so far (VmHWM), kept across its restarts."""
        for name, process in self.system.processes.items():
            peak = vm_hwm_kb(process.pid)
            if peak is not None:
                self.peak_memory_kb[name] = max(self.peak_memory_kb.get(name, 0), peak)


def vm_hwm_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def chaos_settings(base: Settings, start: datetime, days: int) -> Settings:
    """Free ports for everything, so a chaos run never meets the team's servers."""
    return simulation_settings(base.model_copy(update={
        "kafka_bootstrap_servers": f"127.0.0.1:{free_port()}",
        "database_url": f"postgresql://postgres@127.0.0.1:{free_port()}/cloudwallet",
        "topic_prefix": "", "group_prefix": "",
        "wallet_http_port": free_port(), "provisioning_http_port": free_port(),
        "metering_http_port": free_port(), "billing_http_port": free_port(),
        "vcenter_simulator_http_port": free_port(), "portal_http_port": free_port(),
    }), start, days)


def run_chaos(base: Settings, data_dir: Path, *, companies: int, days: int, seed: int,
              faults: int, start: datetime = DEFAULT_START, progress: bool = True,
              report_dir: Path | None = None) -> ChaosResult:
    shutil.rmtree(data_dir, ignore_errors=True)  # the servers start empty
    settings = chaos_settings(base, start, days)
    began = time.monotonic()
    system = start_system(settings, data_dir, use_existing=False, instances_per_service=2)
    try:
        killable = [name for name in system.processes if name != "portal"]
        driver = FaultDriver(system, plan(seed, killable, days, faults))
    except BaseException:
        system.stop()
        raise
    try:
        print(f"{len(system.processes)} processes: {', '.join(system.processes)}")
        print("fault plan: " + "; ".join(f"after day {f.after_day}: {f}"
                                         for f in driver.faults))

        async def work() -> tuple[Outcome, Verdict]:
            urls = {name: system.url(name) for name in system.processes}
            try:
                outcome = await run_simulation(
                    system.settings, urls, seed=seed, start=start, days=days,
                    companies=companies, report_dir=report_dir, progress=progress,
                    patience_s=RECOVERY_TIMEOUT_S, after_day=driver.day_done)
            finally:
                await asyncio.to_thread(driver.finish)
            return outcome, await judge(system.settings, outcome.scenario)

        outcome, verdict = asyncio.run(work())
        return ChaosResult(outcome, driver.injected, verdict, driver.self_exits,
                           driver.peak_memory_kb, time.monotonic() - began)
    finally:
        system.stop()
        driver.close()


def print_result(result: ChaosResult) -> None:
    print("\nfaults injected (wall time since the start; recovered: every process's /health "
          "answers 200 again; resumed: the simulation finished a day after the fault began):")
    for i in result.injected:
        recovery = f"{i.recovery_s:5.1f} s" if i.recovery_s is not None else "never"
        resumed = f"{i.resumed_s:5.1f} s" if i.resumed_s is not None else "after the workload"
        print(f"  {i.at_s:6.0f} s  simulated {i.simulated_day:<18} {i.fault!s:<38} "
              f"recovered {recovery}  resumed {resumed}")
    for at_s, name in result.self_exits:
        print(f"  {at_s:6.0f} s  {name} exited by itself and was started again")
    recoveries = [i.recovery_s for i in result.injected if i.recovery_s is not None]
    if recoveries:
        print(f"recovery: median {sorted(recoveries)[len(recoveries) // 2]:.1f} s, "
              f"longest {max(recoveries):.1f} s")
    print("peak memory (VmHWM, MiB): " + ", ".join(
        f"{name} {kb / 1024:.0f}" for name, kb in sorted(result.peak_memory_kb.items())))
    v = result.verdict
    print(f"messages on Kafka: {v.messages:,}; usage events expected "
          f"{result.outcome.usage_events:,}")
    for line in v.lines():
        print(f"  {line}")
    differences = result.outcome.differences
    print(f"wall time {result.wall_s:.0f} s; oracle: "
          f"{'exact' if not differences else f'{len(differences)} differences'}")
    for difference in differences[:20]:
        print(f"  {difference}")
    print(result.last_line(), flush=True)


def main(companies: int, days: int, seed: int, faults: int, start: datetime,
         data_dir: Path, report_dir: Path | None) -> int:
    from shared.settings import get_settings

    # The simulation's own Kafka clients say every failed reconnect while the broker is
    # down; the fault log says it once.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    result = run_chaos(get_settings(), data_dir, companies=companies, days=days, seed=seed,
                       faults=faults, start=start, report_dir=report_dir)
    print_result(result)
    return 0 if result.passed else 1
