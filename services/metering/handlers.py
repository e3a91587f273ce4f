"""Thin handlers: `vcenter.events` batches in, runtime state and hourly usage out.

A batch is handled in event-time terms, not arrival order: its VM events are applied first
(each VM's history replayed), then each partition's latest clock tick closes that
partition's hours. Both happen in one transaction, so a crash or a replay never changes
what was stated. A backlog of ticks (a simulated month at once) would make that transaction
unbounded, so closing continues in further transactions of at most `close_budget` usage
rows; each is complete in itself and a redelivered tick carries on where the last committed
one stopped.

Publishing: restatements and dead letters go through the outbox. Closing output (the bulk:
one usage event per running VM and hour, and the watermarks) is published straight from
memory once its transaction commits; the usage rows it was made from are the durable
record, and the partition's `published_until` / `published_up_to` say what Kafka holds.
Output committed but never published is republished from those rows by the next batch on
that partition, before anything else. Writing every usage event to the outbox and reading
it back cost more than closing the hours did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from pydantic import TypeAdapter

from services.metering import domain
from services.metering import repository as repo
from services.metering.domain import HOUR, Accept, Ignore, Reject, Statement, floor_hour
from services.metering.messages import (
    encode_usage,
    full_hour_segments_json,
    segments_json,
    to_domain,
    usage_partition,
    watermark_id,
)
from services.metering.repository import DueVm, OutboxRow, PartitionMark, UsageRow, VmRow
from shared.consumer import Incoming, Records, claim_new, dead_letter, dead_letters, parse_records
from shared.contracts.clock import ClockTick
from shared.contracts.metering import MeteringWatermark
from shared.contracts.vcenter import VcenterStreamItem
from shared.outbox import Outgoing, outgoing
from shared.runtime import ServiceRuntime
from shared.topics import METERING_USAGE

CONSUMER = "metering"
STREAM: TypeAdapter[Any] = TypeAdapter(VcenterStreamItem)
# Usage rows per transaction when closing a backlog of hours (about 5 MB of outbox).
CLOSE_BUDGET = 20_000


@dataclass
class Work:
    """One transaction's worth of output: usage rows, messages for the outbox, and closing
    output to publish straight after commit."""

    usage: list[UsageRow] = field(default_factory=list)
    out: list[OutboxRow] = field(default_factory=list)
    direct: list[OutboxRow] = field(default_factory=list)
    watermarks: list[OutboxRow] = field(default_factory=list)

    def send(self, *messages: Outgoing) -> None:
        self.out += [m.row for m in messages]


@dataclass
class InFlight:
    """A transaction's output on its way to Kafka: `sends` are its usage, then (once Kafka
    has that) its watermarks; `marks` are where the two bring the partitions."""

    sends: list[asyncio.Future[Any]]
    marks: list[PartitionMark]
    watermarks: list[OutboxRow] = field(default_factory=list)


def _retrieve(send: asyncio.Future[Any]) -> None:
    if not send.cancelled():
        send.exception()


class MeteringHandlers:
    def __init__(self, runtime: ServiceRuntime, close_budget: int = CLOSE_BUDGET) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.close_budget = close_budget
        self.usage_topic = self.settings.topic(METERING_USAGE.name)

    @property
    def pool(self) -> asyncpg.Pool:
        return self.runtime.pool

    async def on_vcenter_events(self, records: Records) -> None:
        good, bad = parse_records(records, STREAM)
        vm_events = [i for i in good if not isinstance(i.message, ClockTick)]
        ticks: dict[int, datetime] = {}
        for item in good:
            if isinstance(item.message, ClockTick):
                p, at = item.record.partition, domain.utc(item.message.at)
                ticks[p] = max(at, ticks.get(p, at))
        touched = {i.record.partition for i in vm_events} | set(ticks)
        async with self.pool.acquire() as conn:
            in_flight: InFlight | None = None  # usage sent, watermarks still to send
            trailing: InFlight | None = None  # watermarks sent, marks still to record
            via_outbox = False
            first = True
            while first or ticks:
                work = Work()
                if first:
                    work.send(*dead_letters(self.settings, CONSUMER, bad))
                async with conn.transaction():
                    marks = await repo.lock_partitions(conn, touched if first else ticks)
                    if first:
                        await self._republish(conn, marks, work)
                        await self._apply_events(conn, vm_events, marks, work)
                        # Usage in the outbox (restated or republished here, or still being
                        # relayed) must not be overtaken by usage sent straight away: then
                        # the whole batch's closing output follows it through the outbox.
                        via_outbox = any(row[0] == self.usage_topic for row in work.out) \
                            or await repo.usage_queued(conn, self.usage_topic)
                    await self._close(conn, ticks, marks, work)
                    if via_outbox:
                        work.out += work.direct + work.watermarks
                        work.direct, work.watermarks = [], []
                        await repo.mark_published(conn, marks.values())
                    await repo.insert_usage(conn, work.usage)
                    await repo.enqueue(conn, work.out)
                if work.out:
                    self.runtime.relay.notify()
                if work.direct or work.watermarks:
                    sends = await self.publish(work.direct)
                    trailing = await self._settle(conn, in_flight, trailing)
                    in_flight = InFlight(sends, [replace(m) for m in marks.values()],
                                         work.watermarks)
                first = False
            trailing = await self._settle(conn, in_flight, trailing)
            await self._settle(conn, None, trailing)

    async def publish(self, rows: list[OutboxRow]) -> list[asyncio.Future[Any]]:
        sends = await self.runtime.relay.sender.send(rows)
        # Whoever awaits a send handles its failure; if the batch failed first and nobody
        # awaits it any more, its exception is still retrieved.
        for send in sends:
            send.add_done_callback(_retrieve)
        return sends

    async def _settle(self, conn: asyncpg.Connection, in_flight: InFlight | None,
                      trailing: InFlight | None) -> InFlight | None:
        """One step along the pipeline: once Kafka holds the trailing transaction's
        watermarks, record its marks; once it holds the usage in flight, send that
        transaction's watermarks (so a watermark never overtakes the usage it vouches for)
        and return it as the new trailing one. The next batch is handled only after the
        last step, so an hour's first statement is on Kafka before any restatement of it."""
        if trailing is not None:
            await asyncio.gather(*trailing.sends)
            async with conn.transaction():
                await repo.mark_published(conn, trailing.marks)
        if in_flight is None:
            return None
        await asyncio.gather(*in_flight.sends)
        return InFlight(await self.publish(in_flight.watermarks), in_flight.marks)

    async def _republish(self, conn: asyncpg.Connection, marks: dict[int, PartitionMark],
                         work: Work) -> None:
        """Closing output committed by an earlier batch that never reached Kafka (the process
        stopped in between) goes out again, through the outbox, before anything else."""
        for mark in marks.values():
            if not mark.unpublished:
                continue
            for r in await repo.unpublished_usage(conn, mark):
                wallet_id = str(r["wallet_id"])
                key = wallet_id.encode()
                work.out.append((self.usage_topic, key, encode_usage(
                    str(r["vm_id"]), wallet_id, str(r["organisation_id"]), r["hour_start"], 0,
                    r["seconds"], r["segments"]), usage_partition(key)))
            if mark.up_to is not None:
                work.out += self._watermarks(mark.source_partition, mark.up_to)

    # --- VM events ---------------------------------------------------------------------------

    async def _apply_events(self, conn: asyncpg.Connection, items: Sequence[Incoming[Any]],
                            marks: dict[int, PartitionMark], work: Work) -> None:
        items = self._refuse_expired(items, marks, work)
        fresh, reused = await claim_new(conn, repo.SCHEMA, items)
        work.send(*dead_letters(self.settings, CONSUMER, reused))
        if not fresh:
            return
        vms = await repo.lock_vms(conn, (i.message.vm_id for i in fresh))
        new_events: dict[UUID, list[domain.VmEvent]] = {}
        for item in fresh:
            message, partition = item.message, item.record.partition
            vm = vms.get(message.vm_id)
            if vm is not None and vm.source_partition != partition:
                work.send(dead_letter(
                    self.settings, CONSUMER, item.record,
                    f"VM {vm.vm_id} lives on partition {vm.source_partition}, not {partition}:"
                    " its events must be keyed by vm_id"))
                continue
            event = to_domain(message)
            verdict = domain.judge_known(vm.known if vm else None, event, message.vm_id)
            if isinstance(verdict, Reject):
                work.send(dead_letter(self.settings, CONSUMER, item.record, verdict.reason))
                continue
            if isinstance(verdict, Ignore):
                continue
            assert isinstance(verdict, Accept)
            if vm is None:
                vm = vms[message.vm_id] = self._new_vm(message, partition, event.at, marks)
                vm.known = domain.Known(event.at, None, event.at)
            else:
                assert vm.known is not None
                vm.known = vm.known.with_event(event)
            new_events.setdefault(vm.vm_id, []).append(event)
        if not new_events:
            return
        histories = await self._histories(conn, vms, new_events)
        for vm_id in new_events:
            vms[vm_id].state = domain.replay(histories[vm_id], vms[vm_id].snapshot)
        await repo.save_vms(conn, [vms[vm_id] for vm_id in new_events])
        await repo.insert_events(conn, [(vm_id, e) for vm_id, events in new_events.items()
                                        for e in events])
        earliest = {vm_id: min(e.at for e in events) for vm_id, events in new_events.items()}
        closed = {vm_id: vms[vm_id].closed_until(marks.get(vms[vm_id].source_partition))
                  for vm_id in earliest}
        await self._restate(conn, vms, histories, earliest, closed, work)

    def _refuse_expired(self, items: Sequence[Incoming[Any]], marks: dict[int, PartitionMark],
                        work: Work) -> list[Incoming[Any]]:
        """Events dated before the inbox window, by their partition's clock, are refused:
        their inbox rows may be pruned, so the inbox could no longer tell a repeat."""
        kept: list[Incoming[Any]] = []
        for partition in sorted({i.record.partition for i in items}):
            mark = marks.get(partition)
            young, old = self.runtime.refuse_expired(
                [i for i in items if i.record.partition == partition],
                mark.up_to if mark else None)
            kept += young
            work.send(*dead_letters(self.settings, CONSUMER, old))
        return kept

    @staticmethod
    async def _histories(conn: asyncpg.Connection, vms: dict[UUID, VmRow],
                         new_events: dict[UUID, list[domain.VmEvent]]
                         ) -> dict[UUID, list[domain.VmEvent]]:
        """Each VM's events from its snapshot on, with the batch's new ones. A VM with an
        event dated before its snapshot (very late: its hour closed while the VM had other
        events after it) reads its whole history instead, and its snapshot is made again
        and dropped from `vms` for this batch, so what follows replays the whole history."""
        since: dict[UUID, datetime | None] = {}
        remade: dict[UUID, domain.Snapshot] = {}
        for vm_id, events in new_events.items():
            snapshot = vms[vm_id].snapshot
            late = snapshot is not None and any(snapshot.covers(e) for e in events)
            since[vm_id] = None if snapshot is None or late else snapshot.at
        stored = await repo.events_since(conn, since)
        histories = {vm_id: stored[vm_id] + new_events[vm_id] for vm_id in new_events}
        for vm_id, start in since.items():
            snapshot = vms[vm_id].snapshot
            if start is None and snapshot is not None:
                remade[vm_id] = domain.take_snapshot(histories[vm_id], snapshot.at)
                vms[vm_id].snapshot = None
        await repo.save_snapshots(conn, remade)
        return histories

    @staticmethod
    def _new_vm(message: Any, partition: int, created_at: datetime,
                marks: dict[int, PartitionMark]) -> VmRow:
        # Hours the partition already closed are closed for a newcomer too: if it was
        # created in one of them (a late creation), those hours are stated right away.
        closed = floor_hour(created_at)
        mark = marks.get(partition)
        if mark is not None and mark.closed_until is not None:
            closed = max(closed, mark.closed_until)
        return VmRow(message.vm_id, message.organisation_id, message.wallet_id, partition,
                     closed)

    async def _restate(self, conn: asyncpg.Connection, vms: dict[UUID, VmRow],
                       histories: dict[UUID, list[domain.VmEvent]],
                       earliest: dict[UUID, datetime], closed: dict[UUID, datetime],
                       work: Work) -> None:
        """Events in hours already closed (late or out of order) restate those hours."""
        ranges = [(vm_id, floor_hour(at), closed[vm_id])
                  for vm_id, at in earliest.items() if floor_hour(at) < closed[vm_id]]
        if not ranges:
            return
        stated = await repo.latest_statements(conn, ranges)
        for vm_id, start, end in ranges:
            computed = domain.usage_by_hour(histories[vm_id], start, end, vms[vm_id].snapshot)
            for statement in domain.restatements(computed, stated[vm_id], start, end):
                self._state(vms[vm_id], statement, work, work.out)

    def _state(self, vm: VmRow | DueVm, statement: Statement, work: Work,
               out: list[OutboxRow]) -> None:
        usage = statement.usage
        vm_id = str(vm.vm_id)
        segments = segments_json(usage.segments)
        work.usage.append((vm.vm_id, usage.hour_start, statement.revision, usage.seconds,
                           segments))
        key = str(vm.wallet_id).encode()
        out.append((
            self.usage_topic, key,
            encode_usage(vm_id, str(vm.wallet_id), str(vm.organisation_id), usage.hour_start,
                         statement.revision, usage.seconds, segments), usage_partition(key)))

    # --- clock ticks -------------------------------------------------------------------------

    async def _close(self, conn: asyncpg.Connection, ticks: dict[int, datetime],
                     marks: dict[int, PartitionMark], work: Work) -> None:
        """Close hours for each ticked partition until done or the budget is spent; a
        partition leaves `ticks` once its tick is fully processed."""
        for partition in sorted(ticks):
            at, mark = ticks[partition], marks[partition]
            if mark.up_to is not None and at <= mark.up_to:
                del ticks[partition]  # a replayed or older tick: nothing new to close
                continue
            target = floor_hour(at)
            earliest, open_vms = await repo.open_vms(conn, partition, mark.closed_until)
            start = target if earliest is None else min(earliest, target)
            while start < target and len(work.usage) < self.close_budget:
                step = max(1, (self.close_budget - len(work.usage)) // max(open_vms, 1))
                until = min(start + step * HOUR, target)
                await self._close_hours(conn, partition, mark.closed_until, until, work)
                if until < target:
                    await self._advance(conn, mark, until, until, work)
                start = until
            if start < target:
                return  # budget spent: the next transaction carries on
            await self._advance(conn, mark, target, at, work)
            del ticks[partition]

    async def _close_hours(self, conn: asyncpg.Connection, partition: int,
                           closed: datetime | None, until: datetime, work: Work) -> None:
        due = await repo.due_vms(conn, partition, closed, until)
        busy = [vm for vm in due if vm.last_event_at > vm.closed_from]
        topic, full, usage, out = self.usage_topic, domain.SECONDS_PER_HOUR, work.usage, work.direct
        for vm in due:  # running through every hour closed here at one size: the hot path
            if vm.last_event_at > vm.closed_from:
                continue
            vm_id, wallet_id = str(vm.vm_id), str(vm.wallet_id)
            key, organisation_id = wallet_id.encode(), str(vm.organisation_id)
            target = usage_partition(key)
            segments = full_hour_segments_json(vm.spec)
            hour = vm.closed_from
            while hour < until:
                usage.append((vm.vm_id, hour, 0, full, segments))
                out.append((topic, key, encode_usage(
                    vm_id, wallet_id, organisation_id, hour, 0, full, segments), target))
                hour += HOUR
        if busy:  # events inside the closed hours: replay them from the VMs' snapshots
            snapshots = await repo.snapshots(conn, (vm.vm_id for vm in busy))
            histories = await repo.events_since(
                conn, {vm_id: s.at if s else None for vm_id, s in snapshots.items()})
            for vm in busy:
                snapshot = snapshots[vm.vm_id]
                for hour_usage in domain.usage_by_hour(histories[vm.vm_id], vm.closed_from,
                                                       until, snapshot).values():
                    self._state(vm, Statement(hour_usage, 0), work, work.direct)
            # Their hours up to `until` are closed: the next read of their events starts there.
            await repo.save_snapshots(conn, {
                vm.vm_id: domain.take_snapshot(histories[vm.vm_id], until,
                                               snapshots[vm.vm_id]) for vm in busy})

    async def _advance(self, conn: asyncpg.Connection, mark: PartitionMark,
                       closed_until: datetime, up_to: datetime, work: Work) -> None:
        """Record how far the partition is closed and tell billing (watermarks)."""
        mark.closed_until = max(closed_until, mark.closed_until or closed_until)
        moved = mark.up_to is None or up_to > mark.up_to
        mark.up_to = up_to if moved else mark.up_to
        await repo.save_mark(conn, mark)
        if moved:
            work.watermarks += self._watermarks(mark.source_partition, up_to)

    def _watermarks(self, source_partition: int, up_to: datetime) -> list[OutboxRow]:
        """One watermark per `metering.usage` partition: every consumer instance sees it."""
        return [m.row for m in (
            outgoing(self.usage_topic, f"watermark-{source_partition}", MeteringWatermark(
                event_id=watermark_id(source_partition, up_to, target),
                source_partition=source_partition, up_to=up_to, occurred_at=up_to),
                partition=target)
            for target in range(METERING_USAGE.partitions))]
