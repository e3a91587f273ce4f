"""Metering persistence on asyncpg: whole batches in a few multi-row statements."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from services.metering.domain import HourUsage, Kind, Known, Snapshot, VmEvent, VmState
from services.metering.messages import size_of_json, spec_json, usage_from_stored

SCHEMA = "metering"


@dataclass
class PartitionMark:
    source_partition: int
    up_to: datetime | None
    closed_until: datetime | None
    published_until: datetime | None = None
    published_up_to: datetime | None = None

    @property
    def unpublished(self) -> bool:
        """Closing output committed that Kafka is not known to hold."""
        return _behind(self.published_until, self.closed_until) or \
            _behind(self.published_up_to, self.up_to)


def _behind(published: datetime | None, stated: datetime | None) -> bool:
    return stated is not None and (published is None or published < stated)


@dataclass
class VmRow:
    vm_id: UUID
    organisation_id: UUID
    wallet_id: UUID
    source_partition: int
    open_from: datetime
    state: VmState | None = None  # None until replayed
    known: Known | None = None  # what judging its next event needs (None: a new VM)
    snapshot: Snapshot | None = None

    def closed_until(self, mark: PartitionMark | None) -> datetime:
        """Every hour of the VM before this is closed."""
        if mark is None or mark.closed_until is None:
            return self.open_from
        return max(self.open_from, mark.closed_until)


# (vm_id, hour_start, revision, seconds, segments JSON): one statement of one hour.
UsageRow = tuple[UUID, datetime, int, int, str]
# (topic, key, value, partition): a row of the outbox.
OutboxRow = tuple[str, bytes | None, bytes, int | None]


@dataclass(frozen=True, slots=True)
class DueVm:
    """A VM with hours to close: [closed_from, the step's end)."""

    vm_id: UUID
    wallet_id: UUID
    organisation_id: UUID
    spec: str
    running: bool
    last_event_at: datetime
    closed_from: datetime


async def lock_partitions(conn: asyncpg.Connection, partitions: Iterable[int]
                          ) -> dict[int, PartitionMark]:
    """Create-if-missing and row-lock, in order, the marks of the partitions a batch touches."""
    ids = sorted(set(partitions))
    if not ids:
        return {}
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.partitions (source_partition) SELECT unnest($1::int[])
            ON CONFLICT DO NOTHING""", ids)
    rows = await conn.fetch(
        f"""SELECT source_partition, up_to, closed_until, published_until, published_up_to
            FROM {SCHEMA}.partitions
            WHERE source_partition = ANY($1::int[]) ORDER BY source_partition FOR UPDATE""", ids)
    return {r["source_partition"]: PartitionMark(*r) for r in rows}


async def save_mark(conn: asyncpg.Connection, mark: PartitionMark) -> None:
    await conn.execute(
        f"""UPDATE {SCHEMA}.partitions SET up_to = $2, closed_until = $3
            WHERE source_partition = $1""",
        mark.source_partition, mark.up_to, mark.closed_until)


async def mark_published(conn: asyncpg.Connection, marks: Iterable[PartitionMark]) -> None:
    """Record that Kafka holds the partitions' closing output up to their marks. Never moves
    back: another instance may have published further in the meantime."""
    marks = sorted(marks, key=lambda m: m.source_partition)
    if marks:
        # Locked in partition order first, as `lock_partitions` does, so that two instances
        # overlapping in a rebalance cannot deadlock here.
        await conn.execute(
            f"""SELECT FROM {SCHEMA}.partitions WHERE source_partition = ANY($1::int[])
                ORDER BY source_partition FOR UPDATE""", [m.source_partition for m in marks])
        await conn.execute(
            f"""UPDATE {SCHEMA}.partitions p
                SET published_until = greatest(p.published_until, m.closed_until),
                    published_up_to = greatest(p.published_up_to, m.up_to)
                FROM unnest($1::int[], $2::timestamptz[], $3::timestamptz[])
                     AS m(source_partition, closed_until, up_to)
                WHERE p.source_partition = m.source_partition""",
            [m.source_partition for m in marks], [m.closed_until for m in marks],
            [m.up_to for m in marks])


async def usage_queued(conn: asyncpg.Connection, topic: str) -> bool:
    """Whether usage waits in the outbox (rows being relayed count until their delete
    commits)."""
    return bool(await conn.fetchval(
        f"SELECT EXISTS (SELECT FROM {SCHEMA}.outbox WHERE topic = $1)", topic))


async def unpublished_usage(conn: asyncpg.Connection, mark: PartitionMark
                            ) -> list[asyncpg.Record]:
    """The partition's closing output (first statements of its closed hours) that Kafka is
    not known to hold, in the order it was stated."""
    if not _behind(mark.published_until, mark.closed_until):
        return []
    return await conn.fetch(
        f"""SELECT u.vm_id, v.wallet_id, v.organisation_id, u.hour_start, u.seconds,
                   u.segments::text AS segments
            FROM {SCHEMA}.vms v JOIN {SCHEMA}.usage_hours u USING (vm_id)
            WHERE v.source_partition = $1 AND u.revision = 0
              AND u.hour_start >= coalesce($2, '-infinity'::timestamptz) AND u.hour_start < $3
            ORDER BY u.hour_start, u.vm_id""",
        mark.source_partition, mark.published_until, mark.closed_until)


async def lock_vms(conn: asyncpg.Connection, vm_ids: Iterable[UUID]) -> dict[UUID, VmRow]:
    ids = sorted(set(vm_ids))
    if not ids:
        return {}
    rows = await conn.fetch(
        f"""SELECT vm_id, organisation_id, wallet_id, source_partition, open_from, created_at,
                   deleted_at, last_event_at, {_SNAPSHOT_COLUMNS}
            FROM {SCHEMA}.vms WHERE vm_id = ANY($1::uuid[]) ORDER BY vm_id FOR UPDATE""", ids)
    return {r["vm_id"]: VmRow(r["vm_id"], r["organisation_id"], r["wallet_id"],
                              r["source_partition"], r["open_from"],
                              known=Known(r["created_at"], r["deleted_at"], r["last_event_at"]),
                              snapshot=_snapshot(r)) for r in rows}


_SNAPSHOT_COLUMNS = """snapshot_at, created_at AS snapshot_created_at, snapshot_deleted_at,
                       snapshot_running, snapshot_spec, snapshot_since, snapshot_last_event_at"""


def _snapshot(r: asyncpg.Record) -> Snapshot | None:
    if r["snapshot_at"] is None:
        return None
    return Snapshot(r["snapshot_at"], VmState(
        r["snapshot_created_at"], r["snapshot_deleted_at"], r["snapshot_running"],
        size_of_json(r["snapshot_spec"]), r["snapshot_since"], r["snapshot_last_event_at"]))


def _event(r: asyncpg.Record) -> VmEvent:
    return VmEvent(r["event_id"], Kind(r["kind"]), r["occurred_at"],
                   size_of_json(r["spec"]) if r["spec"] is not None else None)


async def histories(conn: asyncpg.Connection, vm_ids: Iterable[UUID]
                    ) -> dict[UUID, list[VmEvent]]:
    """Whole histories: for the runtime check an operator asks for, never per event."""
    ids = list(set(vm_ids))
    found: dict[UUID, list[VmEvent]] = {vm_id: [] for vm_id in ids}
    if not ids:
        return found
    rows = await conn.fetch(
        f"""SELECT vm_id, event_id, kind, occurred_at, spec FROM {SCHEMA}.vm_events
            WHERE vm_id = ANY($1::uuid[])""", ids)
    for r in rows:
        found[r["vm_id"]].append(_event(r))
    return found


async def events_since(conn: asyncpg.Connection, since: dict[UUID, datetime | None]
                       ) -> dict[UUID, list[VmEvent]]:
    """Each VM's events dated at or after its instant (None: all of them): an index range
    per VM on (vm_id, occurred_at), so the read is bounded by the time since the VM's
    snapshot, not by its age."""
    found: dict[UUID, list[VmEvent]] = {vm_id: [] for vm_id in since}
    if not since:
        return found
    # One index range per VM, whatever the planner would estimate: a plain join of many VMs
    # hash-joined a sequential scan of the whole table (every event ever) per batch.
    # OFFSET 0 keeps the lateral subquery from being flattened back into such a join.
    rows = await conn.fetch(
        f"""SELECT e.vm_id, e.event_id, e.kind, e.occurred_at, e.spec
            FROM unnest($1::uuid[], $2::timestamptz[]) AS r(vm_id, since)
            CROSS JOIN LATERAL (
                SELECT v.vm_id, v.event_id, v.kind, v.occurred_at, v.spec
                FROM {SCHEMA}.vm_events v
                WHERE v.vm_id = r.vm_id
                  AND v.occurred_at >= coalesce(r.since, '-infinity'::timestamptz)
                OFFSET 0) e""",
        list(since), list(since.values()))
    for r in rows:
        found[r["vm_id"]].append(_event(r))
    return found


async def snapshots(conn: asyncpg.Connection, vm_ids: Iterable[UUID]
                    ) -> dict[UUID, Snapshot | None]:
    ids = list(set(vm_ids))
    if not ids:
        return {}
    rows = await conn.fetch(
        f"""SELECT vm_id, {_SNAPSHOT_COLUMNS} FROM {SCHEMA}.vms
            WHERE vm_id = ANY($1::uuid[])""", ids)
    return {r["vm_id"]: _snapshot(r) for r in rows}


async def save_snapshots(conn: asyncpg.Connection, taken: dict[UUID, Snapshot]) -> None:
    if not taken:
        return
    states = [s.state for s in taken.values()]
    await conn.execute(
        f"""UPDATE {SCHEMA}.vms v SET snapshot_at = s.at, snapshot_deleted_at = s.deleted_at,
                snapshot_running = s.running, snapshot_spec = s.spec,
                snapshot_since = s.since, snapshot_last_event_at = s.last_event_at
            FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::bool[],
                        $5::text[], $6::timestamptz[], $7::timestamptz[])
                 AS s(vm_id, at, deleted_at, running, spec, since, last_event_at)
            WHERE v.vm_id = s.vm_id""",
        list(taken), [s.at for s in taken.values()], [s.deleted_at for s in states],
        [s.running for s in states], [spec_json(s.size) for s in states],
        [s.since for s in states], [s.last_event_at for s in states])


async def insert_events(conn: asyncpg.Connection, events: Sequence[tuple[UUID, VmEvent]]) -> None:
    if not events:
        return
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.vm_events (event_id, vm_id, kind, occurred_at, spec)
            SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[],
                                 $5::text[])
            ON CONFLICT (event_id) DO NOTHING""",
        [e.event_id for _, e in events], [vm_id for vm_id, _ in events],
        [e.kind.value for _, e in events], [e.at for _, e in events],
        [spec_json(e.size) if e.size is not None else None for _, e in events])


async def save_vms(conn: asyncpg.Connection, vms: Sequence[VmRow]) -> None:
    rows = [v for v in vms if v.state is not None]
    if not rows:
        return
    states = [v.state for v in rows if v.state is not None]
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.vms AS v (vm_id, organisation_id, wallet_id, source_partition,
                created_at, deleted_at, running, spec, state_since, last_event_at, open_from)
            SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::int[],
                $5::timestamptz[], $6::timestamptz[], $7::bool[], $8::text[], $9::timestamptz[],
                $10::timestamptz[], $11::timestamptz[])
            ON CONFLICT (vm_id) DO UPDATE SET deleted_at = excluded.deleted_at,
                running = excluded.running, spec = excluded.spec,
                state_since = excluded.state_since, last_event_at = excluded.last_event_at""",
        [v.vm_id for v in rows], [v.organisation_id for v in rows], [v.wallet_id for v in rows],
        [v.source_partition for v in rows], [s.created_at for s in states],
        [s.deleted_at for s in states], [s.running for s in states],
        [spec_json(s.size) for s in states], [s.since for s in states],
        [s.last_event_at for s in states], [v.open_from for v in rows])


async def latest_statements(conn: asyncpg.Connection,
                            ranges: Sequence[tuple[UUID, datetime, datetime]]
                            ) -> dict[UUID, dict[datetime, tuple[int, HourUsage]]]:
    """The latest revision of every stated hour in each VM's [start, end)."""
    found: dict[UUID, dict[datetime, tuple[int, HourUsage]]] = {r[0]: {} for r in ranges}
    if not ranges:
        return found
    rows = await conn.fetch(
        f"""SELECT DISTINCT ON (u.vm_id, u.hour_start) u.vm_id, u.hour_start, u.revision,
                   u.seconds, u.segments::text AS segments
            FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[]) AS r(vm_id, s, e)
            JOIN {SCHEMA}.usage_hours u
              ON u.vm_id = r.vm_id AND u.hour_start >= r.s AND u.hour_start < r.e
            ORDER BY u.vm_id, u.hour_start, u.revision DESC""",
        [r[0] for r in ranges], [r[1] for r in ranges], [r[2] for r in ranges])
    for r in rows:
        found[r["vm_id"]][r["hour_start"]] = (
            r["revision"], usage_from_stored(r["hour_start"], r["seconds"], r["segments"]))
    return found


async def insert_usage(conn: asyncpg.Connection, rows: Sequence[UsageRow]) -> None:
    """COPY, not INSERT: closing an hour writes a row per running VM, and COPY costs about
    half as much per row. No conflict is possible: the partition lock and `closed_until`
    make sure an hour and revision are stated once."""
    if rows:
        await conn.copy_records_to_table(
            "usage_hours", schema_name=SCHEMA, records=rows,
            columns=["vm_id", "hour_start", "revision", "seconds", "segments"])


async def enqueue(conn: asyncpg.Connection, rows: Sequence[OutboxRow]) -> None:
    """`shared.outbox.enqueue` by COPY: same table, same transaction, same id order, but a
    third of the cost per row when a batch holds tens of thousands of usage events."""
    if rows:
        await conn.copy_records_to_table(
            "outbox", schema_name=SCHEMA, records=rows,
            columns=["topic", "key", "value", "partition"])


# --- closing hours ---------------------------------------------------------------------------

# Implied by the deletion test of the queries below (the VM existed after the partition's
# closed hours), spelled so that `vms_live_by_partition` finds the few VMs that still may
# run instead of every VM the partition ever had.
_MAY_RUN_AFTER_2 = """coalesce(deleted_at, 'infinity'::timestamptz)
                      > coalesce($2::timestamptz, '-infinity'::timestamptz)"""

async def open_vms(conn: asyncpg.Connection, partition: int, closed: datetime | None
                   ) -> tuple[datetime | None, int]:
    """The earliest open hour among a partition's VMs and how many VMs may still run."""
    row = await conn.fetchrow(
        f"""SELECT min(greatest(open_from, $2)) AS earliest, count(*) AS vms FROM {SCHEMA}.vms
            WHERE source_partition = $1 AND {_MAY_RUN_AFTER_2}
              AND (deleted_at IS NULL OR deleted_at > greatest(open_from, $2))""",
        partition, closed)
    return row["earliest"], row["vms"]


async def due_vms(conn: asyncpg.Connection, partition: int, closed: datetime | None,
                  until: datetime) -> list[DueVm]:
    """The partition's VMs that may have run in their open hours before `until` (running, or
    with events inside those hours), each with the first of those hours. A VM deleted
    before its open hours began has nothing left to close and is passed over."""
    rows = await conn.fetch(
        f"""SELECT * FROM (
                SELECT vm_id, wallet_id, organisation_id, spec, running, last_event_at,
                       greatest(open_from, $2) AS closed_from, deleted_at
                FROM {SCHEMA}.vms WHERE source_partition = $1 AND open_from < $3
                  AND {_MAY_RUN_AFTER_2}) v
            WHERE closed_from < $3 AND (deleted_at IS NULL OR deleted_at > closed_from)
              AND (running OR last_event_at > closed_from)""",
        partition, closed, until)
    return [DueVm(r["vm_id"], r["wallet_id"], r["organisation_id"], r["spec"], r["running"],
                  r["last_event_at"], r["closed_from"]) for r in rows]


# --- runtime validation ----------------------------------------------------------------------

_CLOSED_UNTIL = f"""greatest(v.open_from, (SELECT p.closed_until FROM {SCHEMA}.partitions p
                                          WHERE p.source_partition = v.source_partition))"""


async def vm_closed_until(conn: asyncpg.Connection, vm_id: UUID) -> datetime | None:
    """Every hour of the VM before this is closed; None if there is no such VM."""
    closed: datetime | None = await conn.fetchval(
        f"SELECT {_CLOSED_UNTIL} FROM {SCHEMA}.vms v WHERE vm_id = $1", vm_id)
    return closed


async def metered_seconds(conn: asyncpg.Connection, vm_ids: Sequence[UUID], start: datetime,
                          end: datetime) -> dict[UUID, int]:
    """Seconds metered per VM in [start, end): the latest revision of each hour counts."""
    rows = await conn.fetch(
        f"""SELECT vm_id, sum(seconds)::bigint AS seconds FROM (
                SELECT DISTINCT ON (vm_id, hour_start) vm_id, seconds FROM {SCHEMA}.usage_hours
                WHERE vm_id = ANY($1::uuid[]) AND hour_start >= $2 AND hour_start < $3
                ORDER BY vm_id, hour_start, revision DESC) latest
            GROUP BY vm_id""", list(vm_ids), start, end)
    return {r["vm_id"]: r["seconds"] for r in rows}


async def vms_alive_between(conn: asyncpg.Connection, start: datetime, end: datetime,
                            after: UUID | None, limit: int) -> list[tuple[UUID, datetime]]:
    """VMs that existed at some point of [start, end), in id order (a page at a time)."""
    rows = await conn.fetch(
        f"""SELECT vm_id, {_CLOSED_UNTIL} AS closed_until FROM {SCHEMA}.vms v
            WHERE created_at < $2 AND (deleted_at IS NULL OR deleted_at >= $1)
              AND ($3::uuid IS NULL OR vm_id > $3)
            ORDER BY vm_id LIMIT $4""", start, end, after, limit)
    return [(r["vm_id"], r["closed_until"]) for r in rows]


async def vm_state(conn: asyncpg.Connection, vm_id: UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""SELECT vm_id, organisation_id, wallet_id, source_partition, created_at, deleted_at,
                   running, spec, state_since, last_event_at, open_from,
                   {_CLOSED_UNTIL} AS closed_until
            FROM {SCHEMA}.vms v WHERE vm_id = $1""", vm_id)
    return row


async def vm_organisation(conn: asyncpg.Connection, vm_id: UUID) -> UUID | None:
    organisation_id: UUID | None = await conn.fetchval(
        f"SELECT organisation_id FROM {SCHEMA}.vms WHERE vm_id = $1", vm_id)
    return organisation_id


async def vm_usage(conn: asyncpg.Connection, vm_id: UUID, start: datetime, end: datetime
                   ) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""SELECT hour_start, revision, seconds, segments::text AS segments
            FROM {SCHEMA}.usage_hours WHERE vm_id = $1 AND hour_start >= $2 AND hour_start < $3
            ORDER BY hour_start, revision""", vm_id, start, end)
    return rows
