"""The provisioning schema in asyncpg: each read or write is one statement for a whole batch.

Lock order, everywhere: organisations, then requests, then VMs, each in id order, so
concurrent batches (and HTTP commands) cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Literal
from uuid import UUID

import asyncpg

from services.provisioning.domain import (
    Organisation,
    PowerState,
    RequestKind,
    RequestStatus,
    Vm,
    VmRequest,
)
from shared.contracts.vm import VmSpec
from shared.db import advance_stored_clock, stored_clock
from shared.outbox import Outgoing

SCHEMA = "provisioning"

Lock = Literal["", "FOR SHARE", "FOR NO KEY UPDATE", "FOR UPDATE"]


def _ids(values: Iterable[UUID]) -> list[UUID]:
    return sorted(set(values))


# --- the event-time clock ---------------------------------------------------------------------

async def clock_now(conn: asyncpg.Connection) -> datetime | None:
    return await stored_clock(conn, SCHEMA)


async def advance_clock(conn: asyncpg.Connection, at: datetime) -> None:
    await advance_stored_clock(conn, SCHEMA, at)


# --- organisations ------------------------------------------------------------------------

def _organisation(row: asyncpg.Record) -> Organisation:
    return Organisation(row["organisation_id"], row["wallet_id"], row["currency"].strip(),
                        row["billing_mode"], row["suspended"])


async def upsert_organisations(conn: asyncpg.Connection, orgs: Sequence[Organisation],
                               opened_at: Sequence[datetime]) -> None:
    if not orgs:
        return
    # One row per organisation (the last): a redelivered WalletOpened can share the batch
    # with its first delivery, and ON CONFLICT cannot touch a row twice in one statement.
    latest = {o.organisation_id: (o, at) for o, at in zip(orgs, opened_at, strict=True)}
    orgs, opened_at = [o for o, _ in latest.values()], [at for _, at in latest.values()]
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.organisations (organisation_id, wallet_id, currency,
                billing_mode, opened_at)
            SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[],
                $5::timestamptz[])
            ON CONFLICT (organisation_id) DO UPDATE SET currency = excluded.currency,
                billing_mode = excluded.billing_mode""",
        [o.organisation_id for o in orgs], [o.wallet_id for o in orgs],
        [o.currency for o in orgs], [o.billing_mode for o in orgs], list(opened_at))


async def organisations(conn: asyncpg.Connection, ids: Iterable[UUID], lock: Lock = ""
                        ) -> dict[UUID, Organisation]:
    wanted = _ids(ids)
    if not wanted:
        return {}
    rows = await conn.fetch(
        f"""SELECT organisation_id, wallet_id, currency, billing_mode, suspended
            FROM {SCHEMA}.organisations WHERE organisation_id = ANY($1::uuid[])
            ORDER BY organisation_id {lock}""", wanted)
    return {r["organisation_id"]: _organisation(r) for r in rows}


async def save_suspension(conn: asyncpg.Connection, orgs: Sequence[Organisation]) -> None:
    if not orgs:
        return
    await conn.execute(
        f"""UPDATE {SCHEMA}.organisations o SET suspended = v.suspended
            FROM unnest($1::uuid[], $2::bool[]) AS v(organisation_id, suspended)
            WHERE o.organisation_id = v.organisation_id""",
        [o.organisation_id for o in orgs], [o.suspended for o in orgs])


# --- requests -----------------------------------------------------------------------------

_REQUEST_COLUMNS = """request_id, kind, idempotency_key, organisation_id, wallet_id, vm_id, name,
    spec, previous_spec, amount, currency, rate_card_version, status, reason, hold_id,
    received_at, deadline, updated_at"""


def _request(row: asyncpg.Record) -> VmRequest:
    previous = row["previous_spec"]
    return VmRequest(
        request_id=row["request_id"], kind=RequestKind(row["kind"]),
        organisation_id=row["organisation_id"], wallet_id=row["wallet_id"], vm_id=row["vm_id"],
        name=row["name"], spec=VmSpec.model_validate_json(row["spec"]), amount=row["amount"],
        currency=row["currency"].strip(), rate_card_version=row["rate_card_version"],
        status=RequestStatus(row["status"]), received_at=row["received_at"],
        updated_at=row["updated_at"], deadline=row["deadline"],
        idempotency_key=row["idempotency_key"],
        previous_spec=VmSpec.model_validate_json(previous) if previous else None,
        reason=row["reason"], hold_id=row["hold_id"])


async def insert_requests(conn: asyncpg.Connection, requests: Sequence[VmRequest],
                          messages: Sequence[tuple[UUID, Outgoing]] = ()) -> set[UUID]:
    """Insert new requests and, in the same statement (so atomically, even outside a
    transaction), the outbox messages of those actually inserted; `messages` pairs each
    message with its request. Returns the ids inserted (the others existed already)."""
    if not requests:
        return set()
    r, m = requests, messages
    rows = await conn.fetch(
        f"""WITH inserted AS (
                INSERT INTO {SCHEMA}.requests ({_REQUEST_COLUMNS})
                SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::uuid[],
                    $6::uuid[], $7::text[], $8::jsonb[], $9::jsonb[], $10::bigint[], $11::text[],
                    $12::text[], $13::text[], $14::text[], $15::uuid[], $16::timestamptz[],
                    $17::timestamptz[], $18::timestamptz[])
                ON CONFLICT DO NOTHING RETURNING request_id
            ), queued AS (
                INSERT INTO {SCHEMA}.outbox (topic, key, value, partition)
                SELECT o.topic, o.key, o.value, o.partition
                FROM unnest($19::uuid[], $20::text[], $21::bytea[], $22::bytea[], $23::int[])
                    WITH ORDINALITY AS o(request_id, topic, key, value, partition, n)
                JOIN inserted USING (request_id) ORDER BY o.n
            )
            SELECT request_id FROM inserted""",
        [x.request_id for x in r], [x.kind.value for x in r], [x.idempotency_key for x in r],
        [x.organisation_id for x in r], [x.wallet_id for x in r], [x.vm_id for x in r],
        [x.name for x in r], [x.spec.model_dump_json() for x in r],
        [x.previous_spec.model_dump_json() if x.previous_spec else None for x in r],
        [x.amount for x in r], [x.currency for x in r], [x.rate_card_version for x in r],
        [x.status.value for x in r], [x.reason for x in r], [x.hold_id for x in r],
        [x.received_at for x in r], [x.deadline for x in r], [x.updated_at for x in r],
        [rid for rid, _ in m], [o.topic for _, o in m], [o.key for _, o in m],
        [o.value for _, o in m], [o.partition for _, o in m])
    return {row["request_id"] for row in rows}


async def clock_and_requests(conn: asyncpg.Connection, ids: Iterable[UUID]
                             ) -> tuple[datetime | None, dict[UUID, VmRequest]]:
    """The event-time clock and the requests that exist among `ids`, in one round trip."""
    rows = await conn.fetch(
        f"""SELECT (SELECT now FROM {SCHEMA}.clock WHERE id = 1) AS clock, q.*
            FROM (VALUES (1)) AS one(x)
            LEFT JOIN (SELECT {_REQUEST_COLUMNS} FROM {SCHEMA}.requests
                       WHERE request_id = ANY($1::uuid[])) q ON true""", _ids(ids))
    clock: datetime | None = rows[0]["clock"]
    return clock, {r["request_id"]: _request(r) for r in rows if r["request_id"] is not None}


async def save_requests(conn: asyncpg.Connection, requests: Sequence[VmRequest]) -> None:
    if not requests:
        return
    r = requests
    await conn.execute(
        f"""UPDATE {SCHEMA}.requests q SET status = v.status, reason = v.reason,
                hold_id = v.hold_id, deadline = v.deadline, updated_at = v.updated_at
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::timestamptz[],
                $6::timestamptz[]) AS v(request_id, status, reason, hold_id, deadline, updated_at)
            WHERE q.request_id = v.request_id""",
        [x.request_id for x in r], [x.status.value for x in r], [x.reason for x in r],
        [x.hold_id for x in r], [x.deadline for x in r], [x.updated_at for x in r])


async def requests_by_id(conn: asyncpg.Connection, ids: Iterable[UUID], lock: Lock = ""
                         ) -> dict[UUID, VmRequest]:
    wanted = _ids(ids)
    if not wanted:
        return {}
    rows = await conn.fetch(
        f"""SELECT {_REQUEST_COLUMNS} FROM {SCHEMA}.requests
            WHERE request_id = ANY($1::uuid[]) ORDER BY request_id {lock}""", wanted)
    return {r["request_id"]: _request(r) for r in rows}


async def due_requests(conn: asyncpg.Connection, now: datetime) -> list[VmRequest]:
    rows = await conn.fetch(
        f"""SELECT {_REQUEST_COLUMNS} FROM {SCHEMA}.requests
            WHERE status IN ('awaiting_funds', 'awaiting_vcenter') AND deadline <= $1
            ORDER BY request_id FOR UPDATE""", now)
    return [_request(r) for r in rows]


async def requests_awaiting_funds(conn: asyncpg.Connection) -> list[VmRequest]:
    rows = await conn.fetch(
        f"""SELECT {_REQUEST_COLUMNS} FROM {SCHEMA}.requests
            WHERE status = 'awaiting_funds' ORDER BY received_at""")
    return [_request(r) for r in rows]


async def requests_of_vms(conn: asyncpg.Connection, vm_ids: Iterable[UUID], lock: Lock = ""
                          ) -> list[VmRequest]:
    wanted = _ids(vm_ids)
    if not wanted:
        return []
    rows = await conn.fetch(
        f"""SELECT {_REQUEST_COLUMNS} FROM {SCHEMA}.requests WHERE vm_id = ANY($1::uuid[])
            ORDER BY request_id {lock}""", wanted)
    return [_request(r) for r in rows]


async def organisations_of_vms(conn: asyncpg.Connection, vm_ids: Iterable[UUID]) -> set[UUID]:
    wanted = _ids(vm_ids)
    if not wanted:
        return set()
    rows = await conn.fetch(
        f"""SELECT organisation_id FROM {SCHEMA}.vms WHERE vm_id = ANY($1::uuid[])
            UNION SELECT organisation_id FROM {SCHEMA}.requests WHERE vm_id = ANY($1::uuid[])""",
        wanted)
    return {r["organisation_id"] for r in rows}


# --- VMs ----------------------------------------------------------------------------------

_VM_COLUMNS = """vm_id, organisation_id, wallet_id, name, spec, power_state, suspended_for_funds,
    created_request_id, created_at, updated_at"""


def _vm(row: asyncpg.Record) -> Vm:
    return Vm(vm_id=row["vm_id"], organisation_id=row["organisation_id"],
              wallet_id=row["wallet_id"], name=row["name"],
              spec=VmSpec.model_validate_json(row["spec"]),
              power_state=PowerState(row["power_state"]),
              created_at=row["created_at"], updated_at=row["updated_at"],
              suspended_for_funds=row["suspended_for_funds"],
              created_request_id=row["created_request_id"])


async def vms_by_id(conn: asyncpg.Connection, ids: Iterable[UUID], lock: Lock = ""
                    ) -> dict[UUID, Vm]:
    wanted = _ids(ids)
    if not wanted:
        return {}
    rows = await conn.fetch(
        f"""SELECT {_VM_COLUMNS} FROM {SCHEMA}.vms WHERE vm_id = ANY($1::uuid[])
            ORDER BY vm_id {lock}""", wanted)
    return {r["vm_id"]: _vm(r) for r in rows}


async def live_vms_of_organisations(conn: asyncpg.Connection, org_ids: Iterable[UUID],
                                    lock: Lock = "") -> list[Vm]:
    wanted = _ids(org_ids)
    if not wanted:
        return []
    rows = await conn.fetch(
        f"""SELECT {_VM_COLUMNS} FROM {SCHEMA}.vms
            WHERE organisation_id = ANY($1::uuid[]) AND power_state <> 'deleted'
            ORDER BY vm_id {lock}""", wanted)
    return [_vm(r) for r in rows]


async def save_vms(conn: asyncpg.Connection, vms: Sequence[Vm]) -> None:
    if not vms:
        return
    v = vms
    await conn.execute(
        f"""INSERT INTO {SCHEMA}.vms ({_VM_COLUMNS})
            SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::jsonb[],
                $6::text[], $7::bool[], $8::uuid[], $9::timestamptz[], $10::timestamptz[])
            ON CONFLICT (vm_id) DO UPDATE SET spec = excluded.spec,
                power_state = excluded.power_state,
                suspended_for_funds = excluded.suspended_for_funds,
                updated_at = excluded.updated_at""",
        [x.vm_id for x in v], [x.organisation_id for x in v], [x.wallet_id for x in v],
        [x.name for x in v], [x.spec.model_dump_json() for x in v],
        [x.power_state.value for x in v], [x.suspended_for_funds for x in v],
        [x.created_request_id for x in v], [x.created_at for x in v], [x.updated_at for x in v])
