"""Metering's HTTP API: a VM's runtime state and usage, and the runtime validation that
compares metered seconds with the runtime the raw vCenter events show. A VM of an
organisation the caller's key may not see is a 404; the check over every VM is the
operator's."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel

from services.metering import domain
from services.metering import repository as repo
from shared.auth import OPERATORS, Principal
from shared.contracts.vm import VmSpec
from shared.http import ReaderKey, require

if TYPE_CHECKING:
    from services.metering.app import MeteringService

Month = Annotated[str, Query(pattern=r"^\d{4}-(0[1-9]|1[0-2])$",
                             description="YYYY-MM, in UTC")]
PAGE = 500


class VmState(BaseModel):
    """What a VM's owner may know of its metering (not the partitions and cursors behind
    it)."""

    vm_id: UUID
    organisation_id: UUID
    wallet_id: UUID
    spec: VmSpec
    running: bool
    state_since: datetime
    created_at: datetime
    deleted_at: datetime | None
    # Every hour before this is closed (metered and published).
    closed_until: datetime | None


def _check_body(vm_id: UUID, month: str, check: domain.RuntimeCheck) -> dict[str, Any]:
    return {"vm_id": str(vm_id), "month": month, "from": check.start.isoformat(),
            "to": check.end.isoformat(), "metered_seconds": check.metered_seconds,
            "actual_seconds": check.actual_seconds, "within_actual": check.within_actual}


def _bounds(month: str) -> tuple[datetime, datetime]:
    """The month's [start, end), or 422 for one the calendar cannot hold (0000-01, 9999-12)."""
    try:
        return domain.month_bounds(month)
    except ValueError as error:
        raise HTTPException(422, f"no month {month}: {error}") from None


def register_routes(service: MeteringService) -> None:
    router = APIRouter(tags=["metering"])

    def no_vm(vm_id: UUID) -> HTTPException:
        return HTTPException(404, f"no VM {vm_id} has been created")

    async def visible(conn: Any, vm_id: UUID, by: Principal) -> None:
        owner = await repo.vm_organisation(conn, vm_id)
        if owner is None or not by.may_read(owner):
            raise no_vm(vm_id)

    @router.get("/vms/{vm_id}")
    async def vm_state(vm_id: UUID, by: ReaderKey) -> VmState:
        """The VM's runtime state after all its events, and how far its hours are closed."""
        async with service.pool.acquire() as conn:
            row = await repo.vm_state(conn, vm_id)
        if row is None or not by.may_read(row["organisation_id"]):
            raise no_vm(vm_id)
        return VmState(**{**{k: row[k] for k in VmState.model_fields if k != "spec"},
                          "spec": json.loads(row["spec"])})

    @router.get("/vms/{vm_id}/usage")
    async def vm_usage(vm_id: UUID, month: Month, by: ReaderKey) -> dict[str, Any]:
        """Every statement of every hour of the month (revisions included)."""
        start, end = _bounds(month)
        async with service.pool.acquire() as conn:
            await visible(conn, vm_id, by)
            rows = await repo.vm_usage(conn, vm_id, start, end)
        return {"vm_id": str(vm_id), "month": month, "hours": [
            {"hour_start": r["hour_start"].isoformat(), "revision": r["revision"],
             "seconds": r["seconds"], "segments": json.loads(r["segments"])} for r in rows]}

    @router.get("/vms/{vm_id}/runtime")
    async def vm_runtime(vm_id: UUID, month: Month, by: ReaderKey) -> dict[str, Any]:
        """Metered seconds (latest revisions) against the runtime from the raw events, over
        the month's closed hours. `within_actual` must always be true."""
        start, end = _bounds(month)
        async with service.pool.acquire() as conn:
            await visible(conn, vm_id, by)
            closed_until = await repo.vm_closed_until(conn, vm_id)
            if closed_until is None:
                raise no_vm(vm_id)
            metered = await repo.metered_seconds(conn, [vm_id], start, end)
            history = (await repo.histories(conn, [vm_id]))[vm_id]
        check = domain.check_runtime(history, metered.get(vm_id, 0), start, end, closed_until)
        return _check_body(vm_id, month, check)

    @router.get("/runtime", dependencies=[Depends(require(*OPERATORS))])
    async def runtime(month: Month) -> dict[str, Any]:
        """The same check for every VM that existed in the month; lists the VMs metered for
        more than they ran (there should be none)."""
        start, end = _bounds(month)
        checked, metered_total, actual_total = 0, 0, 0
        over: list[dict[str, Any]] = []
        after: UUID | None = None
        async with service.pool.acquire() as conn:
            while page := await repo.vms_alive_between(conn, start, end, after, PAGE):
                ids = [vm_id for vm_id, _ in page]
                metered = await repo.metered_seconds(conn, ids, start, end)
                histories = await repo.histories(conn, ids)
                for vm_id, closed_until in page:
                    check = domain.check_runtime(histories[vm_id], metered.get(vm_id, 0),
                                                 start, end, closed_until)
                    checked += 1
                    metered_total += check.metered_seconds
                    actual_total += check.actual_seconds
                    if not check.within_actual:
                        over.append(_check_body(vm_id, month, check))
                after = ids[-1]
        return {"month": month, "vms_checked": checked, "metered_seconds": metered_total,
                "actual_seconds": actual_total, "over_metered": over}

    service.http.include_router(router)
