"""HTTP commands on existing requests and VMs: cancel a request, resize or delete a VM."""

from __future__ import annotations

from uuid import UUID, uuid4

from services.provisioning import repository as repo
from services.provisioning.domain import (
    Conflict,
    UnknownOrganisation,
    Vm,
    VmRequest,
    new_resize_request,
)
from services.provisioning.flow import ProvisioningFlow
from services.provisioning.messages import Messages
from services.provisioning.submissions import Accepted, resize_request_id
from shared.contracts.vm import VmSpec
from shared.outbox import enqueue


class NotFound(LookupError):
    pass


class CommandFlow(ProvisioningFlow):
    # --- HTTP commands -------------------------------------------------------------------

    async def cancel(self, request_id: UUID) -> VmRequest:
        messages = Messages(self.settings)
        async with self.pool.acquire() as conn, conn.transaction():
            request = (await repo.requests_by_id(conn, [request_id], "FOR UPDATE")
                       ).get(request_id)
            if request is None:
                raise NotFound(f"no request {request_id}")
            messages.add(request.cancel(await self.now(conn)), None)
            await repo.save_requests(conn, [request])
            await enqueue(conn, repo.SCHEMA, messages.out)
        return request

    async def resize(self, vm_id: UUID, spec: VmSpec, idempotency_key: str | None
                     ) -> Accepted:
        messages = Messages(self.settings)
        async with self.pool.acquire() as conn, conn.transaction():
            vm = (await repo.vms_by_id(conn, [vm_id], "FOR UPDATE")).get(vm_id)
            if vm is None:
                raise NotFound(f"no VM {vm_id}")
            request_id = (resize_request_id(vm_id, idempotency_key) if idempotency_key
                          else uuid4())
            prior = await repo.requests_by_id(conn, [request_id])
            if request_id in prior:
                if prior[request_id].spec != spec:
                    raise Conflict("this Idempotency-Key was already used for a different "
                                   "resize")
                return Accepted(prior[request_id], False)
            org = (await repo.organisations(conn, [vm.organisation_id])).get(vm.organisation_id)
            if org is None:
                raise UnknownOrganisation(f"unknown organisation {vm.organisation_id}")
            request, facts = new_resize_request(
                request_id=request_id, idempotency_key=idempotency_key, organisation=org,
                vm=vm, spec=spec, open_requests=await repo.requests_of_vms(conn, [vm_id]),
                book=self.book, now=await self.now(conn), funds_timeout=self.funds_timeout,
                vcenter_timeout=self.vcenter_timeout)
            if not await repo.insert_requests(conn, [request]):
                # Not reached while the key's unique index matches the request id (checked
                # above); kept so a request that was not stored is never accepted nor
                # reserved for.
                raise Conflict(f"resize request {request_id} was not stored: its "
                               "Idempotency-Key clashes with another request")
            messages.add(facts, None)
            await enqueue(conn, repo.SCHEMA, messages.out)
        return Accepted(request, True)

    async def delete_vm(self, vm_id: UUID) -> Vm:
        messages = Messages(self.settings)
        async with self.pool.acquire() as conn, conn.transaction():
            vm = (await repo.vms_by_id(conn, [vm_id], "FOR UPDATE")).get(vm_id)
            if vm is None:
                raise NotFound(f"no VM {vm_id}")
            messages.add(vm.delete(await self.now(conn)), None)
            await repo.save_vms(conn, [vm])
            await enqueue(conn, repo.SCHEMA, messages.out)
        return vm
