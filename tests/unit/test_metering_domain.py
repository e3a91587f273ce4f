"""Metering's domain: runtime per hour from event-time histories, event acceptance,
restatements, and the runtime check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.metering.domain import (
    HOUR,
    Accept,
    HourUsage,
    Ignore,
    Kind,
    Reject,
    Segment,
    Size,
    Statement,
    VmEvent,
    check_runtime,
    floor_hour,
    full_hour,
    hours,
    judge,
    judge_known,
    known,
    month_bounds,
    replay,
    restatements,
    runtime_seconds,
    take_snapshot,
    usage_by_hour,
)

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
SMALL = Size("small", 1, 2, 50)
LARGE = Size("large", 4, 8, 50)
CUSTOM = Size(None, 3, 6, 100)


def ev(kind: Kind, minutes: float, size: Size | None = None) -> VmEvent:
    return VmEvent(uuid4(), kind, T0 + timedelta(minutes=minutes), size)


def created(minutes: float = 0, size: Size = SMALL) -> VmEvent:
    return ev(Kind.CREATED, minutes, size)


# --- examples ---------------------------------------------------------------------------------

def test_a_vm_running_90_minutes_across_an_hour_boundary():
    history = [created(20), ev(Kind.POWERED_ON, 30), ev(Kind.POWERED_OFF, 120)]
    usage = usage_by_hour(history, T0, T0 + 3 * HOUR)
    assert usage == {
        T0: HourUsage(T0, 1800, (Segment(SMALL, 1800),)),
        T0 + HOUR: HourUsage(T0 + HOUR, 3600, (Segment(SMALL, 3600),)),
    }


def test_a_resize_mid_hour_bills_each_size_for_its_part():
    history = [created(-60), ev(Kind.POWERED_ON, -60), ev(Kind.RESIZED, 15, LARGE)]
    usage = usage_by_hour(history, T0, T0 + HOUR)[T0]
    assert usage.segments == (Segment(SMALL, 900), Segment(LARGE, 2700))
    assert usage.seconds == 3600


def test_resizing_back_merges_the_seconds_of_one_size():
    history = [created(0), ev(Kind.POWERED_ON, 0), ev(Kind.RESIZED, 10, LARGE),
               ev(Kind.RESIZED, 20, SMALL)]
    usage = usage_by_hour(history, T0, T0 + HOUR)[T0]
    assert usage.segments == (Segment(SMALL, 3000), Segment(LARGE, 600))


def test_power_off_and_on_within_one_hour_bills_only_the_time_it_ran():
    history = [created(-30), ev(Kind.POWERED_ON, -30), ev(Kind.POWERED_OFF, 10),
               ev(Kind.POWERED_ON, 40)]
    assert usage_by_hour(history, T0, T0 + HOUR)[T0].seconds == 600 + 1200


def test_suspend_and_resume_count_like_power_off_and_on():
    history = [created(0), ev(Kind.POWERED_ON, 0), ev(Kind.SUSPENDED, 5), ev(Kind.RESUMED, 55)]
    assert usage_by_hour(history, T0, T0 + HOUR)[T0].seconds == 300 + 300


def test_a_created_vm_is_off_until_powered_on_and_a_deleted_one_stops():
    history = [created(0), ev(Kind.POWERED_ON, 30), ev(Kind.DELETED, 45)]
    assert usage_by_hour(history, T0, T0 + 5 * HOUR) == {
        T0: HourUsage(T0, 900, (Segment(SMALL, 900),))}


def test_hours_without_runtime_are_left_out():
    history = [created(0)]
    assert usage_by_hour(history, T0, T0 + 3 * HOUR) == {}


def test_repeated_power_on_does_not_restart_the_clock():
    history = [created(0), ev(Kind.POWERED_ON, 0), ev(Kind.POWERED_ON, 30),
               ev(Kind.POWERED_OFF, 40), ev(Kind.POWERED_OFF, 50)]
    assert usage_by_hour(history, T0, T0 + HOUR)[T0].seconds == 2400


def test_sub_second_runtime_is_rounded_down_never_up():
    on = VmEvent(uuid4(), Kind.POWERED_ON, T0 + timedelta(seconds=1, microseconds=700_000))
    off = VmEvent(uuid4(), Kind.POWERED_OFF, T0 + timedelta(seconds=3, microseconds=200_000))
    history = [created(0), on, off]
    assert usage_by_hour(history, T0, T0 + HOUR)[T0].seconds == 1
    assert runtime_seconds(history, T0, T0 + HOUR) == 1


def test_full_hour():
    assert full_hour(T0, LARGE) == HourUsage(T0, 3600, (Segment(LARGE, 3600),))


def test_replay_gives_the_state_after_all_events():
    history = [ev(Kind.POWERED_OFF, 50), created(0), ev(Kind.POWERED_ON, 10),
               ev(Kind.RESIZED, 20, LARGE)]
    state = replay(history)
    assert (state.running, state.size, state.since) == (False, LARGE, T0 + timedelta(minutes=50))
    assert (state.created_at, state.deleted_at) == (T0, None)
    assert state.last_event_at == T0 + timedelta(minutes=50)


def test_replay_needs_a_creation():
    with pytest.raises(ValueError):
        replay([ev(Kind.POWERED_ON, 0)])


def test_events_need_a_timezone_and_sizes_where_they_carry_one():
    with pytest.raises(ValueError):
        VmEvent(uuid4(), Kind.POWERED_ON, datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        VmEvent(uuid4(), Kind.RESIZED, T0)


def test_floor_hour_is_in_utc():
    plus_two = datetime(2026, 3, 2, 12, 30, tzinfo=timezone(timedelta(hours=2)))
    assert floor_hour(plus_two) == T0
    india = datetime(2026, 3, 2, 15, 45, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert floor_hour(india) == T0
    assert list(hours(T0, T0 + 2 * HOUR)) == [T0, T0 + HOUR]


# --- judging events ---------------------------------------------------------------------------

def test_judge_accepts_creation_of_an_unknown_vm_and_ignores_its_failed_creation():
    assert judge([], created()) == Accept()
    assert judge([], ev(Kind.CREATE_FAILED, 0)) == Ignore()


@pytest.mark.parametrize("kind", [Kind.POWERED_ON, Kind.POWERED_OFF, Kind.SUSPENDED,
                                  Kind.RESUMED, Kind.DELETED, Kind.RESIZE_FAILED])
def test_judge_rejects_events_of_unknown_vms(kind):
    verdict = judge([], ev(kind, 0), "vm-1")
    assert isinstance(verdict, Reject) and "unknown VM vm-1" in verdict.reason


def test_judge_rejects_impossible_events():
    history = [created(10), ev(Kind.POWERED_ON, 20)]
    cases = {
        "already created": created(30),
        "before VM": ev(Kind.POWERED_OFF, 5),
        "create failed reported": ev(Kind.CREATE_FAILED, 30),
        "before its": ev(Kind.DELETED, 15),
    }
    for expected, event in cases.items():
        verdict = judge(history, event)
        assert isinstance(verdict, Reject) and expected in verdict.reason, (expected, verdict)


def test_judge_rejects_events_after_deletion_but_accepts_late_ones_before_it():
    history = [created(0), ev(Kind.POWERED_ON, 10), ev(Kind.DELETED, 40)]
    after = judge(history, ev(Kind.POWERED_OFF, 41))
    assert isinstance(after, Reject) and "after VM" in after.reason
    again = judge(history, ev(Kind.DELETED, 50))
    assert isinstance(again, Reject) and "already deleted" in again.reason
    assert judge(history, ev(Kind.POWERED_OFF, 30)) == Accept()


def test_judge_ignores_a_failed_resize_and_accepts_ordinary_events():
    history = [created(0)]
    assert judge(history, ev(Kind.RESIZE_FAILED, 5)) == Ignore()
    for kind in (Kind.POWERED_ON, Kind.POWERED_OFF, Kind.SUSPENDED, Kind.RESUMED):
        assert judge(history, ev(kind, 5)) == Accept()
    assert judge(history, ev(Kind.RESIZED, 5, LARGE)) == Accept()
    assert judge(history, ev(Kind.DELETED, 5)) == Accept()


# --- restatements -----------------------------------------------------------------------------

def usage(hour: datetime, seconds: int, size: Size = SMALL) -> HourUsage:
    return HourUsage(hour, seconds, (Segment(size, seconds),) if seconds else ())


def test_restatements_state_new_hours_and_restate_changed_ones():
    h0, h1, h2, h3 = (T0 + i * HOUR for i in range(4))
    computed = {h0: usage(h0, 3600), h1: usage(h1, 1200), h3: usage(h3, 60)}
    stated = {h0: (0, usage(h0, 3600)), h1: (0, usage(h1, 3600)), h2: (2, usage(h2, 10))}
    assert restatements(computed, stated, h0, h0 + 4 * HOUR) == [
        Statement(usage(h1, 1200), 1),
        Statement(HourUsage(h2, 0, ()), 3),  # it did not run after all: restated to zero
        Statement(usage(h3, 60), 0),
    ]


def test_restatements_only_look_inside_the_range():
    computed = {T0: usage(T0, 3600)}
    assert restatements(computed, {}, T0 + HOUR, T0 + 2 * HOUR) == []


def test_a_changed_size_is_a_change_even_with_the_same_seconds():
    stated = {T0: (0, usage(T0, 3600, SMALL))}
    assert restatements({T0: usage(T0, 3600, LARGE)}, stated, T0, T0 + HOUR) == [
        Statement(usage(T0, 3600, LARGE), 1)]


# --- runtime check ----------------------------------------------------------------------------

def test_month_bounds():
    assert month_bounds("2026-02") == (datetime(2026, 2, 1, tzinfo=UTC),
                                       datetime(2026, 3, 1, tzinfo=UTC))
    assert month_bounds("2026-12")[1] == datetime(2027, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        month_bounds("2026-13")


def test_check_runtime_compares_over_the_closed_hours_of_the_month():
    start, end = month_bounds("2026-03")
    history = [created(0), ev(Kind.POWERED_ON, 0)]
    check = check_runtime(history, 7200, start, end, T0 + 2 * HOUR)
    assert (check.end, check.actual_seconds, check.within_actual) == (T0 + 2 * HOUR, 7200, True)
    over = check_runtime(history, 7201, start, end, T0 + 2 * HOUR)
    assert not over.within_actual
    before = check_runtime(history, 0, start, end, start - HOUR)
    assert (before.end, before.actual_seconds) == (start, 0)


# --- properties -------------------------------------------------------------------------------

OPS = [Kind.POWERED_ON, Kind.POWERED_OFF, Kind.SUSPENDED, Kind.RESUMED, Kind.RESIZED]


@st.composite
def histories(draw, *, whole_seconds: bool = True, span_s: int = 4 * 3600):
    def offset(most: int = span_s) -> timedelta:
        seconds = draw(st.integers(0, most))
        micros = 0 if whole_seconds else draw(st.integers(0, 999_999))
        return timedelta(seconds=seconds, microseconds=micros)

    start = T0 + timedelta(seconds=draw(st.integers(0, 3599)))
    history = [VmEvent(uuid4(), Kind.CREATED, start, draw(st.sampled_from([SMALL, LARGE])))]
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(OPS))
        size = draw(st.sampled_from([SMALL, LARGE, CUSTOM])) if kind is Kind.RESIZED else None
        history.append(VmEvent(uuid4(), kind, start + offset(), size))
    if draw(st.booleans()):
        last = max(e.at for e in history)
        history.append(VmEvent(uuid4(), Kind.DELETED, last + offset(span_s // 4)))
    return history


def window(history: list[VmEvent]) -> tuple[datetime, datetime]:
    return floor_hour(min(e.at for e in history)), floor_hour(max(e.at for e in history)) + \
        2 * HOUR


def brute_force_seconds(history: list[VmEvent], start: datetime, end: datetime
                        ) -> dict[datetime, dict[Size, int]]:
    """Second by second, the state after every event up to that second (whole seconds)."""
    events = sorted(history, key=lambda e: e.order)
    out: dict[datetime, dict[Size, int]] = {}
    t, i, running, size = start, 0, False, None
    while t < end:
        while i < len(events) and events[i].at <= t:
            e = events[i]
            if e.kind in (Kind.CREATED, Kind.RESIZED):
                size = e.size
            elif e.kind in (Kind.POWERED_ON, Kind.RESUMED):
                running = True
            else:
                running = False
            i += 1
        if running and size is not None:
            per = out.setdefault(floor_hour(t), {})
            per[size] = per.get(size, 0) + 1
        t += timedelta(seconds=1)
    return out


@settings(max_examples=60, deadline=None)
@given(histories(span_s=2 * 3600))
def test_usage_matches_a_second_by_second_simulation(history):
    start, end = window(history)
    expected = brute_force_seconds(history, start, end)
    got = usage_by_hour(history, start, end)
    assert {h: {s.size: s.seconds for s in u.segments} for h, u in got.items()} == expected


@settings(max_examples=200, deadline=None)
@given(histories())
def test_hours_never_exceed_3600_nor_the_real_runtime_and_add_up_to_it(history):
    start, end = window(history)
    by_hour = usage_by_hour(history, start, end)
    for hour, u in by_hour.items():
        assert 0 < u.seconds <= 3600
        assert u.seconds == sum(s.seconds for s in u.segments)
        assert all(s.seconds > 0 for s in u.segments)
        assert len({s.size for s in u.segments}) == len(u.segments)
        assert u.seconds <= runtime_seconds(history, hour, hour + HOUR)
    assert sum(u.seconds for u in by_hour.values()) == runtime_seconds(history, start, end)


@settings(max_examples=200, deadline=None)
@given(histories(whole_seconds=False))
def test_with_sub_second_times_billed_seconds_stay_below_the_real_runtime(history):
    start, end = window(history)
    by_hour = usage_by_hour(history, start, end)
    for hour, u in by_hour.items():
        assert u.seconds <= runtime_seconds(history, hour, hour + HOUR)
    assert sum(u.seconds for u in by_hour.values()) <= runtime_seconds(history, start, end)


@settings(max_examples=200, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_arrival_order_does_not_change_usage_or_state(history, rnd):
    start, end = window(history)
    shuffled = list(history)
    rnd.shuffle(shuffled)
    assert usage_by_hour(shuffled, start, end) == usage_by_hour(history, start, end)
    assert replay(shuffled) == replay(history)


def meter(arrivals: list[VmEvent | datetime]) -> dict[datetime, list[HourUsage]]:
    """A model of the service: events and ticks in arrival order; every closed hour is stated
    and late events restate. Returns each hour's statements in revision order."""
    history: list[VmEvent] = []
    closed_until: datetime | None = None
    published: dict[datetime, list[HourUsage]] = {}

    def publish(statements: list[Statement]) -> None:
        for s in statements:
            revisions = published.setdefault(s.usage.hour_start, [])
            assert s.revision == len(revisions)  # revisions count up, one at a time
            revisions.append(s.usage)

    def stated() -> dict[datetime, tuple[int, HourUsage]]:
        return {h: (len(r) - 1, r[-1]) for h, r in published.items()}

    for item in arrivals:
        if isinstance(item, datetime):
            if closed_until is not None and floor_hour(item) > closed_until:
                publish(restatements(usage_by_hour(history, closed_until, floor_hour(item)),
                                     stated(), closed_until, floor_hour(item)))
                closed_until = floor_hour(item)
        else:
            history.append(item)
            if closed_until is None:  # the creation: nothing before its hour is ever open
                closed_until = floor_hour(item.at)
            elif floor_hour(item.at) < closed_until:
                start = floor_hour(item.at)
                publish(restatements(usage_by_hour(history, start, closed_until), stated(),
                                     start, closed_until))
    return published


@settings(max_examples=150, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_final_statements_do_not_depend_on_arrival_order(history, rnd):
    start, end = window(history)
    ticks: list[VmEvent | datetime] = [start + i * HOUR for i in range(
        int((end - start) / HOUR) + 1)]
    in_order: list[VmEvent | datetime] = sorted(
        [*history, *ticks], key=lambda x: x if isinstance(x, datetime) else x.at)
    creation, rest = history[0], history[1:]
    rnd.shuffle(rest)
    # Any interleaving that keeps creation first and the ticks in order.
    scrambled: list[VmEvent | datetime] = [creation]
    queue = list(rest)
    for tick in ticks:
        take = rnd.randint(0, len(queue))
        scrambled += queue[:take]
        queue = queue[take:]
        scrambled.append(tick)
    scrambled += queue
    final = {h: r[-1] for h, r in meter(scrambled).items()}
    truth = usage_by_hour(history, start, end)
    assert {h: u for h, u in final.items() if u.seconds} == truth
    assert final.keys() >= truth.keys()
    assert {h: r[-1] for h, r in meter(in_order).items() if r[-1].seconds} == truth
    for revisions in meter(scrambled).values():  # every restatement is a real change
        assert all(a != b for a, b in pairwise(revisions))


def test_the_model_restates_a_late_event_once():
    on, off = ev(Kind.POWERED_ON, 0), ev(Kind.POWERED_OFF, 30)
    published = meter([created(0), on, T0 + HOUR, T0 + 2 * HOUR, off])
    assert published[T0] == [usage(T0, 3600), usage(T0, 1800)]
    assert published[T0 + HOUR] == [usage(T0 + HOUR, 3600), HourUsage(T0 + HOUR, 0, ())]


# --- snapshots: bounded reads of a VM's history ----------------------------------------------

@settings(max_examples=200, deadline=None)
@given(histories(), st.data())
def test_a_snapshot_and_the_events_after_it_answer_as_the_whole_history(history, data):
    start, end = window(history)
    created_at = min(e.at for e in history)
    cut = data.draw(st.sampled_from([h for h in hours(start, end) if h > created_at]))
    snapshot = take_snapshot(history, cut)
    after = [e for e in history if not snapshot.covers(e)]
    assert replay(after, snapshot) == replay(history)
    for first in hours(cut, end):
        assert usage_by_hour(after, first, end, snapshot) == usage_by_hour(history, first, end)
    # Snapshots chain: one taken from an earlier one equals one taken from the whole history.
    later = data.draw(st.sampled_from(list(hours(cut, end + HOUR))))
    assert take_snapshot(after, later, snapshot) == take_snapshot(history, later)


def test_usage_before_a_snapshot_is_not_answered_from_it():
    snapshot = take_snapshot([created(0), ev(Kind.POWERED_ON, 10)], T0 + HOUR)
    assert snapshot.state.running and snapshot.at == T0 + HOUR
    with pytest.raises(ValueError, match="not known from a snapshot"):
        usage_by_hour([], T0, T0 + 2 * HOUR, snapshot)
    assert usage_by_hour([], T0 + HOUR, T0 + 2 * HOUR, snapshot) == {
        T0 + HOUR: usage(T0 + HOUR, 3600)}


def test_a_very_late_event_is_covered_by_the_snapshot_and_makes_it_again():
    history = [created(0), ev(Kind.POWERED_ON, 10)]
    snapshot = take_snapshot(history, T0 + HOUR)
    late = ev(Kind.POWERED_OFF, 40)
    assert snapshot.covers(late) and not snapshot.covers(ev(Kind.POWERED_OFF, 60))
    again = take_snapshot([*history, late], snapshot.at)
    assert not again.state.running and again.state.since == late.at


@settings(max_examples=200, deadline=None)
@given(histories(), st.data())
def test_judging_by_what_is_known_equals_judging_by_the_history(history, data):
    kind = data.draw(st.sampled_from(list(Kind)))
    at = min(e.at for e in history) + timedelta(seconds=data.draw(st.integers(-600, 6 * 3600)))
    event = VmEvent(uuid4(), kind, at, SMALL if kind in (Kind.CREATED, Kind.RESIZED) else None)
    prefix = history[:data.draw(st.integers(0, len(history)))]
    assert judge_known(known(prefix), event, "vm") == judge(prefix, event, "vm")
    vm = known(prefix[:1])
    for e in prefix[1:]:
        assert vm is not None
        vm = vm.with_event(e)
    assert vm == known(prefix)


def meter_with_snapshots(arrivals: list[VmEvent | datetime]) -> dict[datetime, list[HourUsage]]:
    """`meter` as the service does it, reading no more than a snapshot and the events after
    it: closing hours with events in them moves the snapshot to the end of those hours, and
    an event dated before the snapshot (very late) makes it again from the whole history."""
    history: list[VmEvent] = []
    snapshot = None
    closed_until: datetime | None = None
    published: dict[datetime, list[HourUsage]] = {}

    def publish(statements: list[Statement]) -> None:
        for s in statements:
            published.setdefault(s.usage.hour_start, []).append(s.usage)

    def stated() -> dict[datetime, tuple[int, HourUsage]]:
        return {h: (len(r) - 1, r[-1]) for h, r in published.items()}

    def recent() -> list[VmEvent]:
        return [e for e in history if snapshot is None or not snapshot.covers(e)]

    for item in arrivals:
        if isinstance(item, datetime):
            if closed_until is not None and floor_hour(item) > closed_until:
                until = floor_hour(item)
                publish(restatements(usage_by_hour(recent(), closed_until, until, snapshot),
                                     stated(), closed_until, until))
                snapshot = take_snapshot(recent(), until, snapshot)
                closed_until = until
        else:
            history.append(item)
            if closed_until is None:
                closed_until = floor_hour(item.at)
                continue
            if snapshot is not None and snapshot.covers(item):
                snapshot = take_snapshot(history, snapshot.at)
                start = floor_hour(item.at)
                publish(restatements(usage_by_hour(history, start, closed_until), stated(),
                                     start, closed_until))
            elif floor_hour(item.at) < closed_until:
                start = floor_hour(item.at)
                publish(restatements(usage_by_hour(recent(), start, closed_until, snapshot),
                                     stated(), start, closed_until))
    return published


@settings(max_examples=150, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_metering_from_snapshots_states_exactly_what_the_whole_history_states(history, rnd):
    start, end = window(history)
    ticks: list[VmEvent | datetime] = [start + i * HOUR for i in range(
        int((end - start) / HOUR) + 1)]
    creation, rest = history[0], history[1:]
    rnd.shuffle(rest)
    scrambled: list[VmEvent | datetime] = [creation]
    queue = list(rest)
    for tick in ticks:
        take = rnd.randint(0, len(queue))
        scrambled += queue[:take]
        queue = queue[take:]
        scrambled.append(tick)
    scrambled += queue
    assert meter_with_snapshots(scrambled) == meter(scrambled)
