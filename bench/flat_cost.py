"""Whether the cost per usage event stays flat as the system ages: per simulated month, the
wall time, the usage events, and the CPU seconds of each service process, from samples
taken at the end of every simulated day; at the end, each table's size and each process's
peak memory. `bench simulation` prints this and plots the CPU per 1,000 events by month.

CPU is the fairer measure on a shared machine: another engineer's load stretches the wall
time of a month but not the CPU a service spends on it. Kafka's and PostgreSQL's own CPU is
not attributed (they are shared servers); their growing work would show as wall time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from subprocess import Popen

import asyncpg
import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.settings import Settings
from shared.topics import ALL_TOPICS

# The last month must cost no more than this much over the first (issue #18).
FLAT_WITHIN = 0.15
# A process that spent less CPU than this in a month (the portal: no part in the usage
# path) gets no ratio: its figure is noise.
LEAST_CPU_S = 1.0
# Nor does one that was given fewer input records than this (the portal, the simulator).
LEAST_INPUTS = 1000


# A process's name and the name its consumers carry in the topic map.
CONSUMER_NAMES = {"vcenter-simulator": "vcenter-hooks"}


@dataclass
class Month:
    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    usage_events: int = 0
    # Records that arrived on each service's input topics (ticks included): the work it was
    # given, whatever its kind.
    inputs: dict[str, int] = field(default_factory=dict)
    # HTTP requests the simulation sent to each service: work too, and for provisioning a
    # share that grows as more companies run dry (their status is asked for)
    requests: dict[str, int] = field(default_factory=dict)

    def cpu_per_1000(self, service: str) -> float:
        return 1000 * self.cpu_s.get(service, 0.0) / max(self.usage_events, 1)

    def work(self, service: str) -> int:
        return self.inputs.get(service, 0) + self.requests.get(service, 0)

    def cpu_per_1000_inputs(self, service: str) -> float:
        return 1000 * self.cpu_s.get(service, 0.0) / max(self.work(service), 1)

    @property
    def events_per_s(self) -> float:
        return self.usage_events / self.wall_s if self.wall_s else 0.0


def cpu_seconds(process: Popen[bytes]) -> float:
    """User and system CPU of a live process (0 once it is gone)."""
    try:
        times = psutil.Process(process.pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def peak_memory_mb(process: Popen[bytes]) -> float:
    """The process's resident set high-water mark (VmHWM), in MiB."""
    try:
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _add_since(month: dict[str, int], last: dict[str, int], totals: Mapping[str, int]
               ) -> None:
    """Adds to the month what each running total grew by since the last call."""
    for name, total in totals.items():
        month[name] = month.get(name, 0) + total - last.get(name, 0)
        last[name] = total


class CostMeter:
    """Fed at the end of each simulated day (the system is quiet then: the driver waited for
    it), it charges the CPU and wall time since the previous day to that day's month."""

    def __init__(self, processes: Mapping[str, Popen[bytes]], clock: float) -> None:
        self.processes = dict(processes)
        self.months: dict[date, Month] = {}
        self.peak_mb: dict[str, float] = {}
        self._last_cpu = {name: cpu_seconds(p) for name, p in self.processes.items()}
        self._last_clock = clock
        self._last_inputs: dict[str, int] = {}
        self._last_requests: dict[str, int] = {}

    def inputs_seen(self, day_start: datetime, totals: Mapping[str, int]) -> None:
        """Records on each service's input topics so far (end offsets), after a day."""
        _add_since(self._month_ending(day_start).inputs, self._last_inputs, totals)

    def requests_seen(self, day_start: datetime, totals: Mapping[str, int]) -> None:
        """HTTP requests sent to each service so far, after a day."""
        _add_since(self._month_ending(day_start).requests, self._last_requests, totals)

    def _month_ending(self, day_start: datetime) -> Month:
        ended = (day_start - timedelta(microseconds=1)).date()
        return self.months.setdefault(date(ended.year, ended.month, 1), Month())

    def day_done(self, day_start: datetime, clock: float) -> None:
        # The sync point `day_start` closed the hours before it: the work since the last one
        # belongs to the day that ended there.
        month = self._month_ending(day_start)
        month.wall_s += clock - self._last_clock
        self._last_clock = clock
        for name, process in self.processes.items():
            now = cpu_seconds(process)
            month.cpu_s[name] = month.cpu_s.get(name, 0.0) + now - self._last_cpu[name]
            self._last_cpu[name] = now
        self.record_memory()

    def record_memory(self) -> None:
        """Before the processes stop: their high-water marks go with them."""
        for name, process in self.processes.items():
            self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), peak_memory_mb(process))

    async def count_usage(self, conn: asyncpg.Connection) -> None:
        """Usage events per month, as metering stated them (first statements of each hour)."""
        for r in await conn.fetch(
                """SELECT date_trunc('month', hour_start AT TIME ZONE 'UTC')::date AS month,
                          count(*) AS n
                   FROM metering.usage_hours WHERE revision = 0 GROUP BY 1"""):
            if r["month"] in self.months:
                self.months[r["month"]].usage_events = r["n"]

    def full_months(self) -> list[date]:
        """Months with usage, the partial day-0 month (before the first sync) left out."""
        return [m for m in sorted(self.months) if self.months[m].usage_events]

    def ratios(self, per_input: bool = False) -> dict[str, float]:
        """Last month's CPU per usage event (or per input record) over the first's, per
        service, and, per usage event, wall time too (first rate over last: above 1 means
        slower)."""
        months = self.full_months()
        if len(months) < 2:
            return {}
        first, last = self.months[months[0]], self.months[months[-1]]
        cost = Month.cpu_per_1000_inputs if per_input else Month.cpu_per_1000
        out = {name: cost(last, name) / cost(first, name)
               for name in self.processes
               if min(first.cpu_s.get(name, 0.0), last.cpu_s.get(name, 0.0)) >= LEAST_CPU_S
               and (not per_input or min(first.work(name), last.work(name)) >= LEAST_INPUTS)}
        if not per_input:
            out["wall per event"] = first.events_per_s / max(last.events_per_s, 1e-9)
        return out

    def report(self) -> list[str]:
        names = list(self.processes)
        lines = ["cost per usage event by simulated month (CPU s per 1,000 events):",
                 f"  {'month':8} {'events':>9} {'wall s':>7} {'events/s':>9} "
                 + " ".join(f"{n[:12]:>12}" for n in names)]
        for m in self.full_months():
            month = self.months[m]
            lines.append(f"  {m:%Y-%m}  {month.usage_events:>9,} {month.wall_s:>7.0f} "
                         f"{month.events_per_s:>9,.0f} "
                         + " ".join(f"{month.cpu_per_1000(n):>12.3f}" for n in names))
        lines.append("work given to each service (records in on its input topics + HTTP requests "
                     "sent to it), and CPU s per 1,000 of them:")
        for m in self.full_months():
            month = self.months[m]
            lines.append(f"  {m:%Y-%m}  " + " ".join(
                f"{n[:12]}={month.inputs.get(n, 0):,}+{month.requests.get(n, 0):,}"
                f"/{month.cpu_per_1000_inputs(n):.3f}"
                for n in names if month.work(n)))
        for per_input in (False, True):
            ratios = self.ratios(per_input)
            if ratios:
                unit = "input record or HTTP request" if per_input else "usage event"
                lines.append(f"last month over first, per {unit}"
                             f" (target: at most {1 + FLAT_WITHIN:.2f}):")
                lines += [f"  {name:18} {ratio:.3f} "
                          f"{'ok' if ratio <= 1 + FLAT_WITHIN else 'OVER'}"
                          + ("" if per_input else self._work_note(name))
                          for name, ratio in ratios.items()]
        lines.append("peak memory (VmHWM, MiB): " + ", ".join(
            f"{name} {mb:.0f}" for name, mb in self.peak_mb.items()))
        return lines

    def _work_note(self, name: str) -> str:
        """Beside a service's cost per usage event: how its work per usage event changed
        (a service whose work is not usage, as provisioning's, changes with the scenario)."""
        months = self.full_months()
        if name not in self.processes or len(months) < 2:
            return ""
        first, last = self.months[months[0]], self.months[months[-1]]
        if min(first.work(name), last.work(name)) < LEAST_INPUTS:
            return ""
        grew = (last.work(name) / max(last.usage_events, 1)) / (
            first.work(name) / max(first.usage_events, 1))
        return f"  (its work per usage event: {grew:.3f}x)"

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        months = self.full_months()
        fig, (cpu, per_input, rate) = plt.subplots(1, 3, figsize=(15, 4))
        labels = [f"{m:%Y-%m}" for m in months]
        steady = self.ratios(per_input=True)
        for name in self.processes:
            cpu.plot(labels, [self.months[m].cpu_per_1000(name) for m in months], marker="o",
                     label=name)
            if name in steady:  # a handful of inputs a month makes a meaningless figure
                per_input.plot(labels, [self.months[m].cpu_per_1000_inputs(name)
                                        for m in months], marker="o", label=name)
        cpu.set_title("CPU seconds per 1,000 usage events")
        per_input.set_title("CPU seconds per 1,000 input records and HTTP requests")
        for axis in (cpu, per_input):
            axis.set_ylim(bottom=0)
            axis.legend(fontsize=8)
        rate.bar(labels, [self.months[m].events_per_s for m in months], color="#4a7")
        rate.set_title("usage events per second of wall time")
        for axis in (cpu, per_input, rate):
            axis.set_xlabel("simulated month")
            axis.tick_params(axis="x", labelrotation=30)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)


async def table_sizes(conn: asyncpg.Connection) -> list[tuple[str, int, int]]:
    """(schema.table, estimated rows, bytes with indexes and TOAST) of every service table,
    largest first."""
    rows = await conn.fetch(
        """SELECT n.nspname || '.' || c.relname AS name, c.reltuples::bigint AS rows,
                  pg_total_relation_size(c.oid) AS bytes
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind = 'r' AND n.nspname IN
                 ('wallet', 'provisioning', 'metering', 'billing', 'auth')
           ORDER BY bytes DESC""")
    return [(r["name"], max(r["rows"], 0), r["bytes"]) for r in rows]


def size_report(sizes: list[tuple[str, int, int]]) -> list[str]:
    lines = ["table sizes at the end (rows estimated by ANALYZE; size with indexes):"]
    lines += [f"  {name:36} {rows:>11,} rows {size / 2**20:>9.1f} MiB"
              for name, rows, size in sizes]
    return lines


async def input_totals(settings: Settings, services: Sequence[str],
                       offsets: AIOKafkaConsumer) -> dict[str, int]:
    """Per service, the records on the topics it consumes so far (sum of end offsets)."""
    wanted = {name: [t for t in ALL_TOPICS if CONSUMER_NAMES.get(name, name) in t.consumers]
              for name in services}
    partitions = {TopicPartition(settings.topic(t.name), p)
                  for topics in wanted.values() for t in topics for p in range(t.partitions)}
    ends = await offsets.end_offsets(list(partitions))
    return {name: sum(ends[TopicPartition(settings.topic(t.name), p)]
                      for t in topics for p in range(t.partitions))
            for name, topics in wanted.items() if topics}


async def scans(conn: asyncpg.Connection) -> list[tuple[str, int, int, int]]:
    """(table, sequential scans, rows they read, index scans) since the run began: a hot-path
    read that grows with age shows as many sequential scans reading many rows of a large
    table."""
    rows = await conn.fetch(
        """SELECT schemaname || '.' || relname AS name, seq_scan, seq_tup_read,
                  coalesce(idx_scan, 0) AS idx_scan
           FROM pg_stat_user_tables
           WHERE schemaname IN ('wallet', 'provisioning', 'metering', 'billing', 'auth')
           ORDER BY seq_tup_read DESC""")
    return [(r["name"], r["seq_scan"], r["seq_tup_read"], r["idx_scan"]) for r in rows]


def scan_report(found: list[tuple[str, int, int, int]], shown: int = 12) -> list[str]:
    lines = ["sequential scans over the run, by rows read (index scans beside):"]
    lines += [f"  {name:36} {seq:>9,} seq scans {read:>14,} rows read {idx:>11,} index scans"
              for name, seq, read, idx in found[:shown]]
    return lines
