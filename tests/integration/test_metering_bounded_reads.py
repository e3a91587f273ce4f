"""Metering reads a VM's events since its snapshot (the end of its last closed hours with
events in them), not its whole history: the read stays the same size however long the VM
lives, and a very late event still restates its hour exactly."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from services.metering import repository as repo
from tests.integration.test_metering_service import T0, Vm, hour, hours_of, metering

HOURS = 8


async def test_each_closed_hour_moves_the_snapshot_so_the_read_stays_one_hour_long(env, db):
    vm = Vm()
    async with metering(env) as (_, m):
        await m.publish(vm.created(0), vm.on(0))
        for h in range(1, HOURS + 1):
            # Two power changes inside every hour: the VM is busy in each hour closed.
            await m.publish(vm.off(60 * h - 50), vm.on(60 * h - 40))
            await m.closed(await m.tick(60 * h))
            snapshot = (await repo.snapshots(db, [vm.vm_id]))[vm.vm_id]
            assert snapshot is not None and snapshot.at == T0 + timedelta(hours=h)
            assert snapshot.state.running
            since = await repo.events_since(db, {vm.vm_id: snapshot.at})
            assert since[vm.vm_id] == []  # nothing after the closed hours yet
        assert await db.fetchval("SELECT count(*) FROM metering.vm_events WHERE vm_id = $1",
                                 vm.vm_id) == 2 + 2 * HOURS
        usage = hours_of(m.usage(vm))
        assert {k: v["seconds"] for k, v in usage.items()} == {
            (hour(h), 0): 3000 for h in range(HOURS)}


async def test_the_bounded_read_is_an_index_range_on_the_vm_and_its_recent_events(env, db):
    plan = "\n".join(r[0] for r in await db.fetch(
        """EXPLAIN SELECT e.vm_id, e.event_id, e.kind, e.occurred_at, e.spec
           FROM unnest($1::uuid[], $2::timestamptz[]) AS r(vm_id, since)
           JOIN metering.vm_events e ON e.vm_id = r.vm_id
            AND e.occurred_at >= coalesce(r.since, '-infinity'::timestamptz)""",
        [Vm().vm_id], [T0]))
    assert "vm_events_by_vm" in plan and "Seq Scan on vm_events" not in plan, plan


async def test_a_very_late_event_before_the_snapshot_restates_its_hour_and_remakes_it(env, db):
    vm = Vm()
    async with metering(env) as (_, m):
        await m.publish(vm.created(0), vm.on(0), vm.off(150))
        await m.closed(await m.tick(240))  # hours 0-3 closed; busy, so the snapshot is at 14:00
        before = (await repo.snapshots(db, [vm.vm_id]))[vm.vm_id]
        assert before is not None and before.at == T0 + timedelta(hours=4)
        assert not before.state.running
        # vCenter reports, very late, that the VM was off between 10:30 and 11:00.
        await m.publish(vm.off(30), vm.on(60))
        await m.read_until(lambda _: (hour(0), 1) in hours_of(m.usage(vm)))
        await m.closed(await m.tick(300))
        assert latest(m.usage(vm)) == {hour(0): 1800, hour(1): 3600, hour(2): 1800}
        after = (await repo.snapshots(db, [vm.vm_id]))[vm.vm_id]
        assert after is not None and after.at == before.at
        assert after.state.since == before.state.since and not after.state.running


def latest(usage: list[dict[str, Any]]) -> dict[str, int]:
    """Seconds of each hour's latest revision (the two late events may arrive in two
    batches, the first restating hour 1 down and the second back up)."""
    found: dict[str, tuple[int, int]] = {}
    for (start, revision), m in hours_of(usage).items():
        if revision >= found.get(start, (-1, 0))[0]:
            found[start] = (revision, m["seconds"])
    return {start: seconds for start, (_, seconds) in found.items() if seconds}
