"""Metering's rules, with no I/O: a VM's runtime, hour by hour, from its lifecycle events.

Everything here is event time. A VM's history is the list of its accepted events; any
question (its state now, the seconds it ran in an hour, its runtime in a month) is answered
by replaying that list in event-time order, so the answer never depends on the order in
which the events arrived.

Seconds are whole seconds rounded down, per size and hour: billed seconds can fall short of
the real runtime by a fraction of a second, never exceed it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from uuid import UUID

HOUR = timedelta(hours=1)
SECONDS_PER_HOUR = 3600
_MICROSECOND = timedelta(microseconds=1)
_MICROS_PER_SECOND = 1_000_000


class Kind(StrEnum):
    CREATED = "created"
    CREATE_FAILED = "create_failed"
    POWERED_ON = "powered_on"
    RESUMED = "resumed"
    POWERED_OFF = "powered_off"
    SUSPENDED = "suspended"
    RESIZED = "resized"
    RESIZE_FAILED = "resize_failed"
    DELETED = "deleted"


# Events that shape runtime and are kept in a VM's history. The others change nothing.
RECORDED = frozenset({Kind.CREATED, Kind.POWERED_ON, Kind.RESUMED, Kind.POWERED_OFF,
                      Kind.SUSPENDED, Kind.RESIZED, Kind.DELETED})
_STARTS = frozenset({Kind.POWERED_ON, Kind.RESUMED})
_STOPS = frozenset({Kind.POWERED_OFF, Kind.SUSPENDED, Kind.DELETED})

# Events at the same instant still need one order that does not depend on arrival:
# creation first, deletion last, a resize before a power change, and otherwise the event id.
_RANK = {Kind.CREATED: 0, Kind.RESIZED: 1, Kind.POWERED_OFF: 2, Kind.SUSPENDED: 2,
         Kind.POWERED_ON: 3, Kind.RESUMED: 3, Kind.DELETED: 4,
         Kind.CREATE_FAILED: 5, Kind.RESIZE_FAILED: 5}


@dataclass(frozen=True, slots=True)
class Size:
    tier: str | None
    vcpu: int
    ram_gb: int
    disk_gb: int


@dataclass(frozen=True, slots=True)
class VmEvent:
    event_id: UUID
    kind: Kind
    at: datetime
    size: Size | None = None  # for CREATED and RESIZED

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError("event time must carry a timezone")
        if self.kind in (Kind.CREATED, Kind.RESIZED) and self.size is None:
            raise ValueError(f"a {self.kind} event needs a size")

    @property
    def order(self) -> tuple[datetime, int, UUID]:
        return (self.at, _RANK[self.kind], self.event_id)


@dataclass(frozen=True, slots=True)
class VmState:
    """Where a VM stands after all its events."""

    created_at: datetime
    deleted_at: datetime | None
    running: bool
    size: Size
    since: datetime  # when the current power state began
    last_event_at: datetime


@dataclass(frozen=True, slots=True)
class Segment:
    size: Size
    seconds: int


@dataclass(frozen=True, slots=True)
class HourUsage:
    hour_start: datetime
    seconds: int
    segments: tuple[Segment, ...]


@dataclass(frozen=True, slots=True)
class Statement:
    """Usage to publish for an hour: revision 0 states it, higher revisions restate it."""

    usage: HourUsage
    revision: int


@dataclass(frozen=True, slots=True)
class Accept:
    pass


@dataclass(frozen=True, slots=True)
class Ignore:
    """Nothing to meter, nothing wrong (e.g. a failed creation of a VM that never existed)."""


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str


Verdict = Accept | Ignore | Reject


# --- time -----------------------------------------------------------------------------------

def utc(t: datetime) -> datetime:
    return t.astimezone(UTC)


def floor_hour(t: datetime) -> datetime:
    return utc(t).replace(minute=0, second=0, microsecond=0)


def hours(start: datetime, end: datetime) -> Iterator[datetime]:
    """Hour starts of [start, end), both on hour boundaries."""
    hour = start
    while hour < end:
        yield hour
        hour += HOUR


def _micros(span: timedelta) -> int:
    return span // _MICROSECOND


# --- accepting events -----------------------------------------------------------------------

def judge(history: Sequence[VmEvent], event: VmEvent, vm_id: object = "") -> Verdict:
    """Whether `event` can join a VM's accepted `history` (empty: the VM is unknown)."""
    return judge_known(known(history), event, vm_id)


@dataclass(frozen=True, slots=True)
class Known:
    """What judging a new event needs of a VM's accepted events: no more than its creation,
    its deletion and its latest event, so that a VM's whole history is never read to judge
    one more event."""

    created_at: datetime
    deleted_at: datetime | None
    latest_at: datetime

    def with_event(self, event: VmEvent) -> Known:
        """After accepting `event` (never a creation: that makes a new `Known`)."""
        deleted_at = event.at if event.kind is Kind.DELETED else self.deleted_at
        return Known(self.created_at, deleted_at, max(self.latest_at, event.at))


def known(history: Sequence[VmEvent]) -> Known | None:
    if not history:
        return None
    created = next(e for e in history if e.kind is Kind.CREATED)
    deleted = next((e for e in history if e.kind is Kind.DELETED), None)
    return Known(created.at, deleted.at if deleted else None, max(e.at for e in history))


def judge_known(vm: Known | None, event: VmEvent, vm_id: object = "") -> Verdict:
    """Whether `event` can join the accepted events of a VM (None: the VM is unknown)."""
    if vm is None:
        if event.kind is Kind.CREATED:
            return Accept()
        if event.kind is Kind.CREATE_FAILED:
            return Ignore()
        return Reject(f"unknown VM {vm_id}: {event.kind} for a VM that was never created")
    created_at = vm.created_at.isoformat()
    if event.kind is Kind.CREATED:
        return Reject(f"VM {vm_id} was already created at {created_at}")
    if event.kind is Kind.CREATE_FAILED:
        return Reject(f"create failed reported for VM {vm_id}, which exists since {created_at}")
    if event.at < vm.created_at:
        return Reject(f"{event.kind} at {event.at.isoformat()} is before VM {vm_id} was "
                      f"created at {created_at}")
    if vm.deleted_at is not None:
        if event.kind is Kind.DELETED:
            return Reject(f"VM {vm_id} was already deleted at {vm.deleted_at.isoformat()}")
        if event.at > vm.deleted_at:
            return Reject(f"{event.kind} at {event.at.isoformat()} is after VM {vm_id} was "
                          f"deleted at {vm.deleted_at.isoformat()}")
    elif event.kind is Kind.DELETED and vm.latest_at > event.at:
        return Reject(f"deletion at {event.at.isoformat()} of VM {vm_id} is before its "
                      f"latest event at {vm.latest_at.isoformat()}")
    if event.kind is Kind.RESIZE_FAILED:
        return Ignore()
    return Accept()


# --- replaying a history --------------------------------------------------------------------

def ordered(history: Iterable[VmEvent]) -> list[VmEvent]:
    return sorted(history, key=lambda e: e.order)


def replay(history: Iterable[VmEvent], since: Snapshot | None = None) -> VmState:
    """The state after every event of a history that starts with the VM's creation, or, with
    `since`, after the snapshot and the events from its instant on."""
    events = ordered(history)
    if since is not None:
        return _fold(since.state, events)
    if not events or events[0].kind is not Kind.CREATED:
        raise ValueError("a VM's history starts with its creation")
    first = events[0]
    assert first.size is not None
    return _fold(VmState(first.at, None, False, first.size, first.at, first.at), events[1:])


def _fold(state: VmState, events: Sequence[VmEvent]) -> VmState:
    """`state` after `events`, which are in order and no earlier than what it was made of."""
    created_at, deleted_at, running = state.created_at, state.deleted_at, state.running
    size, since, last_event_at = state.size, state.since, state.last_event_at
    for e in events:
        if e.kind is Kind.RESIZED:
            assert e.size is not None
            size = e.size
        elif e.kind in _STARTS and not running:
            running, since = True, e.at
        elif e.kind in _STOPS and running:
            running, since = False, e.at
        if e.kind is Kind.DELETED:
            deleted_at = e.at
        last_event_at = e.at
    return VmState(created_at, deleted_at, running, size, since, last_event_at)


# --- snapshots: a VM's past folded into one state -------------------------------------------

@dataclass(frozen=True, slots=True)
class Snapshot:
    """A VM's state made of all its events before `at` (an hour boundary). With the events
    from `at` on, it answers every question about `at` and later exactly as the whole history
    would, so metering reads a VM's events since its last closed hour, not since its
    creation. An event that arrives dated before `at` (very late) changes the snapshot: the
    whole history is read once and the snapshot made again (`take_snapshot`)."""

    at: datetime
    state: VmState

    def covers(self, event: VmEvent) -> bool:
        """Whether `event` is dated before the snapshot, so it is folded into it."""
        return event.at < self.at


def take_snapshot(history: Iterable[VmEvent], at: datetime,
                  since: Snapshot | None = None) -> Snapshot:
    """The snapshot at `at` of a history (or of `since` and the events after it), which
    must hold the VM's creation before `at`."""
    return Snapshot(at, replay([e for e in history if e.at < at], since))


def running_spans(history: Iterable[VmEvent], since: Snapshot | None = None
                  ) -> list[tuple[datetime, datetime | None, Size]]:
    """[start, end) spans during which the VM ran at one size; the last may be open (None).
    With `since`, the spans from the snapshot's instant on (`history` then holds the events
    from that instant on)."""
    spans: list[tuple[datetime, datetime | None, Size]] = []
    size: Size | None = None if since is None else since.state.size
    started: datetime | None = None
    if since is not None and since.state.running:
        started = since.at
    for e in ordered(history):
        if e.kind in (Kind.CREATED, Kind.RESIZED):
            if started is not None and size is not None and e.size != size:
                if e.at > started:
                    spans.append((started, e.at, size))
                started = e.at
            size = e.size
        elif e.kind in _STARTS and started is None:
            started = e.at
        elif e.kind in _STOPS and started is not None:
            assert size is not None
            if e.at > started:
                spans.append((started, e.at, size))
            started = None
    if started is not None and size is not None:
        spans.append((started, None, size))
    return spans


def usage_by_hour(history: Iterable[VmEvent], start: datetime, end: datetime,
                  since: Snapshot | None = None) -> dict[datetime, HourUsage]:
    """Usage of every hour in [start, end) (hour boundaries) in which the VM ran a second or
    more. Segments follow the order in which the sizes first ran within the hour. With
    `since`, `history` holds the events from the snapshot on, and `start` is no earlier."""
    if since is not None and start < since.at:
        raise ValueError(f"usage from {start.isoformat()} is not known from a snapshot at "
                         f"{since.at.isoformat()}")
    micros: dict[datetime, dict[Size, int]] = {}
    for span_start, span_end, size in running_spans(history, since):
        a = max(span_start, start)
        b = end if span_end is None else min(span_end, end)
        hour = floor_hour(a)
        while a < b:
            upto = min(hour + HOUR, b)
            per_size = micros.setdefault(hour, {})
            per_size[size] = per_size.get(size, 0) + _micros(upto - a)
            a, hour = upto, hour + HOUR
    result: dict[datetime, HourUsage] = {}
    for hour in sorted(micros):
        segments = tuple(Segment(size, us // _MICROS_PER_SECOND)
                         for size, us in micros[hour].items() if us >= _MICROS_PER_SECOND)
        seconds = sum(s.seconds for s in segments)
        if seconds > 0:
            result[hour] = HourUsage(hour, seconds, segments)
    return result


def full_hour(hour_start: datetime, size: Size) -> HourUsage:
    """A VM that was running through the whole hour without a change."""
    return HourUsage(hour_start, SECONDS_PER_HOUR, (Segment(size, SECONDS_PER_HOUR),))


def runtime_seconds(history: Iterable[VmEvent], start: datetime, end: datetime) -> int:
    """Whole seconds the VM ran in [start, end), rounded down once: the real runtime that
    metered seconds are checked against."""
    total = 0
    for span_start, span_end, _ in running_spans(history):
        a = max(span_start, start)
        b = end if span_end is None else min(span_end, end)
        if b > a:
            total += _micros(b - a)
    return total // _MICROS_PER_SECOND


# --- closing and restating hours ------------------------------------------------------------

def restatements(computed: Mapping[datetime, HourUsage],
                 stated: Mapping[datetime, tuple[int, HourUsage]],
                 start: datetime, end: datetime) -> list[Statement]:
    """What to publish for the closed hours [start, end) after the VM's history changed.

    `computed` is the usage from the history now, `stated` the latest published revision of
    each hour. An hour never stated gets revision 0 if the VM ran in it; a stated hour whose
    usage changed is restated in full with the next revision, down to zero seconds if the VM
    turns out not to have run, so the consumer can bill the difference.
    """
    out: list[Statement] = []
    for hour in hours(start, end):
        now = computed.get(hour)
        before = stated.get(hour)
        if before is None:
            if now is not None:
                out.append(Statement(now, 0))
            continue
        revision, previous = before
        now = now or HourUsage(hour, 0, ())
        if now != previous:
            out.append(Statement(now, revision + 1))
    return out


# --- runtime validation ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RuntimeCheck:
    """Metered seconds against the runtime the raw events show, over the same closed hours."""

    start: datetime
    end: datetime
    metered_seconds: int
    actual_seconds: int

    @property
    def within_actual(self) -> bool:
        return self.metered_seconds <= self.actual_seconds


def check_runtime(history: Iterable[VmEvent], metered_seconds: int, month_start: datetime,
                  month_end: datetime, closed_until: datetime) -> RuntimeCheck:
    end = max(month_start, min(month_end, closed_until))
    return RuntimeCheck(month_start, end, metered_seconds,
                        runtime_seconds(history, month_start, end))


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """[start, end) of a `YYYY-MM` month in UTC."""
    year, number = (int(x) for x in month.split("-"))
    if not 1 <= number <= 12:
        raise ValueError(f"no month {month}")
    start = datetime(year, number, 1, tzinfo=UTC)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
    return start, end
