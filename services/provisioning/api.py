"""The portal's HTTP API for provisioning (FastAPI): requests, estimates, resize, cancel.

Every route needs an API key. Errors are problem documents whose `detail` says why: 400
without an Idempotency-Key, 404 for an unknown organisation, request or VM (and for one the
caller's key may not see), 409 for a clash with the current state, 422 for an invalid size
or one the rate card cannot price.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Header, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field

from services.provisioning import repository as repo
from services.provisioning.commands import NotFound
from services.provisioning.domain import (
    Conflict,
    InvalidRequest,
    UnknownOrganisation,
    Vm,
    VmRequest,
    spec_of,
)
from services.provisioning.submissions import Accepted, Refused, Submission
from shared.auth import READERS, Principal
from shared.contracts.base import StorableText, UtcDatetime
from shared.contracts.vm import VmSpec
from shared.http import ActorKey, ReaderKey, require
from shared.money import Money
from shared.pricing import RateCard

if TYPE_CHECKING:
    from services.provisioning.app import ProvisioningService

IDEMPOTENCY_HEADER = "Idempotency-Key"


class Size(BaseModel):
    """A tier (small, medium, large, enterprise) or a custom vCPU / RAM; disk optional."""

    model_config = ConfigDict(extra="forbid")

    tier: str | None = None
    vcpu: int | None = None
    ram_gb: int | None = None
    disk_gb: int | None = None

    def spec(self) -> VmSpec:
        try:
            return spec_of(self.tier, self.vcpu, self.ram_gb, self.disk_gb)
        except InvalidRequest as error:
            raise HTTPException(422, str(error)) from None


class NewVmRequest(Size):
    organisation_id: UUID
    name: StorableText = Field(min_length=1, max_length=80)


class EstimateRequest(Size):
    organisation_id: UUID | None = None
    at: UtcDatetime | None = None


class RequestView(BaseModel):
    request_id: UUID
    kind: str
    status: str
    reason: str | None
    organisation_id: UUID
    wallet_id: UUID
    vm_id: UUID
    name: str
    spec: VmSpec
    previous_spec: VmSpec | None
    hold_minor: int
    currency: str
    hold: str
    rate_card_version: str
    hold_id: UUID | None
    idempotency_key: str | None
    received_at: datetime
    deadline: datetime | None
    updated_at: datetime


class VmView(BaseModel):
    vm_id: UUID
    organisation_id: UUID
    wallet_id: UUID
    name: str
    spec: VmSpec
    power_state: str
    suspended_for_funds: bool
    created_request_id: UUID | None
    created_at: datetime
    updated_at: datetime


def request_view(r: VmRequest) -> RequestView:
    return RequestView(
        request_id=r.request_id, kind=r.kind.value, status=r.status.value, reason=r.reason,
        organisation_id=r.organisation_id, wallet_id=r.wallet_id, vm_id=r.vm_id, name=r.name,
        spec=r.spec, previous_spec=r.previous_spec, hold_minor=r.amount, currency=r.currency,
        hold=Money(r.amount, r.currency).format(), rate_card_version=r.rate_card_version,
        hold_id=r.hold_id, idempotency_key=r.idempotency_key, received_at=r.received_at,
        deadline=r.deadline, updated_at=r.updated_at)


def vm_view(vm: Vm) -> VmView:
    return VmView(
        vm_id=vm.vm_id, organisation_id=vm.organisation_id, wallet_id=vm.wallet_id,
        name=vm.name, spec=vm.spec, power_state=vm.power_state.value,
        suspended_for_funds=vm.suspended_for_funds, created_request_id=vm.created_request_id,
        created_at=vm.created_at, updated_at=vm.updated_at)


def card_view(card: RateCard) -> dict[str, Any]:
    """Rates as exact fractions of a minor unit ("1/50"), so nothing is rounded in transit."""
    return {"version": card.version, "effective_from": card.effective_from.isoformat(),
            "currency": card.currency, "tier_monthly_minor": card.tier_monthly_minor,
            "vcpu_hour_minor": str(card.vcpu_hour), "ram_gb_hour_minor": str(card.ram_gb_hour),
            "disk_gb_hour_minor": str(card.disk_gb_hour),
            "hours_per_month": card.hours_per_month}


def _key(value: str | None, required: bool) -> str | None:
    if value is None:
        if required:
            raise HTTPException(400, f"the {IDEMPOTENCY_HEADER} header is required")
        return None
    if not 1 <= len(value) <= 120:
        raise HTTPException(400, f"{IDEMPOTENCY_HEADER} must be 1 to 120 characters")
    return value


def register_routes(service: ProvisioningService) -> None:
    router = APIRouter(tags=["provisioning"])
    handlers = service.handlers

    async def visible_request(request_id: UUID, by: Principal, acting: bool = False
                              ) -> VmRequest:
        async with service.pool.acquire() as conn:
            request = (await repo.requests_by_id(conn, [request_id])).get(request_id)
        if request is None or not (by.may_act_for(request.organisation_id) if acting
                                   else by.may_read(request.organisation_id)):
            raise HTTPException(404, f"no request {request_id}")
        return request

    async def visible_vm(vm_id: UUID, by: Principal, acting: bool = False) -> Vm:
        async with service.pool.acquire() as conn:
            vm = (await repo.vms_by_id(conn, [vm_id])).get(vm_id)
        if vm is None or not (by.may_act_for(vm.organisation_id) if acting
                              else by.may_read(vm.organisation_id)):
            raise HTTPException(404, f"no VM {vm_id}")
        return vm

    def unknown_organisation(organisation_id: UUID) -> HTTPException:
        return HTTPException(404, f"unknown organisation {organisation_id}")

    @router.post("/vm-requests", status_code=202, response_model=RequestView)
    async def request_vm(body: NewVmRequest, by: ActorKey,
                         idempotency_key: Annotated[str | None,
                                                    Header(alias=IDEMPOTENCY_HEADER)] = None,
                         ) -> Response:
        """Price a VM and start its saga. The same key returns the same request (200)."""
        if not by.may_act_for(body.organisation_id):
            raise unknown_organisation(body.organisation_id)
        key = _key(idempotency_key, required=True)
        assert key is not None
        spec = body.spec()
        result = await handlers.intake.submit(Submission(body.organisation_id, key, body.name,
                                                         spec))
        if isinstance(result, Refused):
            raise HTTPException(result.status, result.reason)
        # Serialised once, here: the hot path skips FastAPI's second validation pass.
        return Response(request_view(result.request).model_dump_json(),
                        status_code=202 if result.new else 200,
                        media_type="application/json")

    @router.get("/vm-requests/{request_id}")
    async def get_request(request_id: UUID, by: ReaderKey) -> RequestView:
        return request_view(await visible_request(request_id, by))

    @router.post("/vm-requests/{request_id}/cancel")
    async def cancel(request_id: UUID, by: ActorKey) -> RequestView:
        """Cancel a request before vCenter has answered; its funds are released."""
        await visible_request(request_id, by, acting=True)
        try:
            request = await handlers.cancel(request_id)
        except NotFound as error:
            raise HTTPException(404, str(error)) from None
        except Conflict as error:
            raise HTTPException(409, str(error)) from None
        service.relay.notify()
        return request_view(request)

    @router.post("/estimates")
    async def estimate(body: EstimateRequest, by: ReaderKey) -> dict[str, Any]:
        """Hourly and monthly price of a size, from the rate card in effect at `at` in the
        organisation's wallet currency (without an organisation: the home currency, ZAR)."""
        spec = body.spec()
        async with service.pool.acquire() as conn:
            at = body.at or await handlers.now(conn)
            org = None
            if body.organisation_id is not None:
                org = (await repo.organisations(conn, [body.organisation_id])
                       ).get(body.organisation_id)
                if org is None or not by.may_read(org.organisation_id):
                    raise unknown_organisation(body.organisation_id)
        # An organisation's price is in its wallet's currency; without one, the home currency.
        try:
            quote = handlers.book.estimate(spec, at, org.currency if org else None)
        except LookupError as error:
            raise HTTPException(422, str(error)) from None
        return {"rate_card_version": quote.rate_card_version, "at": at.isoformat(),
                "spec": spec.model_dump(), "currency": quote.monthly.currency,
                "hourly_minor": quote.hourly.amount, "monthly_minor": quote.monthly.amount,
                "hourly": quote.hourly.format(), "monthly": quote.monthly.format()}

    @router.get("/rate-cards", dependencies=[Depends(require(*READERS))])
    async def rate_cards() -> list[dict[str, Any]]:
        """Every rate card version with the moment it took effect; history never changes."""
        return [card_view(card) for card in handlers.book.cards]

    @router.post("/vms/{vm_id}/resize", status_code=202)
    async def resize(vm_id: UUID, body: Size, response: Response, by: ActorKey,
                     idempotency_key: Annotated[str | None,
                                                Header(alias=IDEMPOTENCY_HEADER)] = None,
                     ) -> RequestView:
        """Hold the monthly price increase (if any), then resize in vCenter."""
        await visible_vm(vm_id, by, acting=True)
        key = _key(idempotency_key, required=False)
        try:
            result: Accepted = await handlers.resize(vm_id, body.spec(), key)
        except NotFound as error:
            raise HTTPException(404, str(error)) from None
        except UnknownOrganisation as error:
            raise HTTPException(404, str(error)) from None
        except Conflict as error:
            raise HTTPException(409, str(error)) from None
        except InvalidRequest as error:
            raise HTTPException(422, str(error)) from None
        service.relay.notify()
        if not result.new:
            response.status_code = 200
        return request_view(result.request)

    @router.get("/vms/{vm_id}")
    async def get_vm(vm_id: UUID, by: ReaderKey) -> VmView:
        return vm_view(await visible_vm(vm_id, by))

    @router.delete("/vms/{vm_id}", status_code=202)
    async def delete_vm(vm_id: UUID, by: ActorKey) -> VmView:
        """Delete the VM in vCenter; once it is gone, whatever is held for it returns."""
        await visible_vm(vm_id, by, acting=True)
        try:
            vm = await handlers.delete_vm(vm_id)
        except NotFound as error:
            raise HTTPException(404, str(error)) from None
        service.relay.notify()
        return vm_view(vm)

    @router.get("/organisations/{organisation_id}")
    async def organisation(organisation_id: UUID, by: ReaderKey) -> dict[str, Any]:
        """What provisioning knows of an organisation (from the wallet's WalletOpened)."""
        async with service.pool.acquire() as conn:
            org = (await repo.organisations(conn, [organisation_id])).get(organisation_id)
        if org is None or not by.may_read(organisation_id):
            raise unknown_organisation(organisation_id)
        return {"organisation_id": org.organisation_id, "wallet_id": org.wallet_id,
                "currency": org.currency, "billing_mode": org.billing_mode,
                "suspended": org.suspended}

    @router.get("/organisations/{organisation_id}/vms")
    async def organisation_vms(organisation_id: UUID, by: ReaderKey) -> list[VmView]:
        """The organisation's VMs that are not deleted, with size, power state and whether
        they are suspended for funds (the portal's VM list)."""
        async with service.pool.acquire() as conn:
            org = (await repo.organisations(conn, [organisation_id])).get(organisation_id)
            if org is None or not by.may_read(organisation_id):
                raise unknown_organisation(organisation_id)
            vms = await repo.live_vms_of_organisations(conn, [organisation_id])
        return [vm_view(vm) for vm in sorted(vms, key=lambda vm: (vm.created_at, vm.name))]

    service.http.include_router(router)
