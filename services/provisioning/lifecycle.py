"""A request's life after intake: the wallet's decision, vCenter's events about its VM, and
the timeouts the clock's ticks bring, in event time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import TypeAdapter

from services.provisioning import repository as repo
from services.provisioning.domain import (
    Fact,
    Organisation,
    PowerState,
    RequestKind,
    Vm,
    VmRequest,
    event_now,
    vm_from_created,
)
from services.provisioning.flow import CONSUMER, ProvisioningFlow
from services.provisioning.messages import Messages
from shared.consumer import Records, claim_new, dead_letter, dead_letters, parse_records
from shared.contracts.clock import ClockTick
from shared.contracts.vcenter import (
    VcenterStreamItem,
    VmCreated,
    VmCreateFailed,
    VmDeleted,
    VmPoweredOff,
    VmPoweredOn,
    VmResized,
    VmResizeFailed,
    VmResumed,
    VmSuspended,
)
from shared.contracts.wallet import (
    FundsReserved,
    WalletDecision,
)
from shared.outbox import enqueue

DECISIONS: TypeAdapter[Any] = TypeAdapter(WalletDecision)
VCENTER: TypeAdapter[Any] = TypeAdapter(VcenterStreamItem)
TICKS: TypeAdapter[ClockTick] = TypeAdapter(ClockTick)


class LifecycleFlow(ProvisioningFlow):
    # --- wallet.decisions ----------------------------------------------------------------

    async def on_wallet_decisions(self, records: Records) -> None:
        good, bad = parse_records(records, DECISIONS)
        messages = Messages(self.settings)
        messages.out += dead_letters(self.settings, CONSUMER, bad)
        async with self.pool.acquire() as conn, conn.transaction():
            clock = await repo.clock_now(conn)
            fresh, reused = await claim_new(
                conn, repo.SCHEMA, self._young_enough(good, clock, messages))
            messages.out += dead_letters(self.settings, CONSUMER, reused)
            requests = await repo.requests_by_id(
                conn, (i.message.request_id for i in fresh), "FOR UPDATE")
            for item in fresh:
                m = item.message
                request = requests.get(m.request_id)
                if request is None:
                    messages.out.append(dead_letter(self.settings, CONSUMER, item.record,
                                                    f"no provisioning request {m.request_id}"))
                    continue
                if isinstance(m, FundsReserved):
                    facts = request.funds_reserved(m.hold_id, clock, self.vcenter_timeout,
                                                   m.expires_at)
                else:
                    facts = request.funds_rejected(m.reason.value, m.detail,
                                                   event_now(clock, request.received_at))
                messages.add(facts, m)
            await repo.save_requests(conn, list(requests.values()))
            committed = await enqueue(conn, repo.SCHEMA, messages.out)
        self.runtime.relay.push(committed)

    # --- vcenter.events ------------------------------------------------------------------

    async def on_vcenter_events(self, records: Records) -> None:
        good, bad = parse_records(records, VCENTER)
        messages = Messages(self.settings)
        messages.out += dead_letters(self.settings, CONSUMER, bad)
        # Ticks share the topic to order metering; our timeouts follow clock.ticks instead.
        vm_events = [i for i in good if not isinstance(i.message, ClockTick)]
        async with self.pool.acquire() as conn, conn.transaction():
            fresh, reused = await claim_new(conn, repo.SCHEMA, self._young_enough(
                vm_events, await repo.clock_now(conn), messages))
            messages.out += dead_letters(self.settings, CONSUMER, reused)
            vm_ids = {i.message.vm_id for i in fresh}
            org_ids = await repo.organisations_of_vms(conn, vm_ids)
            org_ids |= {i.message.organisation_id for i in fresh
                        if isinstance(i.message, VmCreated)}
            orgs = await repo.organisations(conn, org_ids, "FOR SHARE")
            requests = await repo.requests_of_vms(conn, vm_ids, "FOR UPDATE")
            vms = await repo.vms_by_id(conn, vm_ids, "FOR UPDATE")
            by_id = {r.request_id: r for r in requests}
            for item in fresh:
                m = item.message
                request = self._request_for(m, by_id, requests)
                messages.add(self._apply_vm_event(m, request, vms, orgs), m)
            await repo.save_requests(conn, requests)
            await repo.save_vms(conn, list(vms.values()))
            committed = await enqueue(conn, repo.SCHEMA, messages.out)
        self.runtime.relay.push(committed)

    @staticmethod
    def _request_for(m: Any, by_id: dict[UUID, VmRequest], requests: Sequence[VmRequest]
                     ) -> VmRequest | None:
        """The request an event answers: named by the event, or (for a hook that does not
        echo request ids) the VM's create request or its open resize."""
        request_id = getattr(m, "request_id", None)
        if request_id is not None:
            return by_id.get(request_id)
        if isinstance(m, VmCreated | VmCreateFailed):
            kind = RequestKind.CREATE
        elif isinstance(m, VmResized | VmResizeFailed):
            kind = RequestKind.RESIZE
        else:
            return None
        for request in requests:
            if request.vm_id == m.vm_id and request.kind is kind and (
                    kind is RequestKind.CREATE or request.status.is_open):
                return request
        return None

    def _apply_vm_event(self, m: Any, request: VmRequest | None, vms: dict[UUID, Vm],
                        orgs: dict[UUID, Organisation]) -> list[Fact]:
        vm = vms.get(m.vm_id)
        now: datetime = m.occurred_at
        match m:
            case VmCreated():
                if vm is not None:
                    return request.vm_created(now) if request is not None else []
                vm, facts = vm_from_created(vm_id=m.vm_id, organisation_id=m.organisation_id,
                                            wallet_id=m.wallet_id, spec=m.spec,
                                            request=request, now=now)
                vms[m.vm_id] = vm
                return facts
            case VmCreateFailed() | VmResizeFailed():
                return request.vcenter_failed(m.reason, now) if request is not None else []
            case VmResized():
                if vm is not None:
                    vm.resized(m.spec, now)
                return request.vm_resized(now) if request is not None else []
            case VmPoweredOn() | VmResumed() if vm is not None:
                org = orgs.get(vm.organisation_id)
                return vm.powered_on(now, org is not None and org.suspended)
            case VmPoweredOff() if vm is not None:
                vm.powered_off(now)
            case VmSuspended() if vm is not None:
                vm.powered_off(now, PowerState.SUSPENDED)
            case VmDeleted() if vm is not None:
                return vm.deleted(now)
        return []

    # --- clock.ticks: timeouts in event time -----------------------------------------------

    async def on_clock_ticks(self, records: Records) -> None:
        good, bad = parse_records(records, TICKS)
        messages = Messages(self.settings)
        messages.out += dead_letters(self.settings, CONSUMER, bad)
        async with self.pool.acquire() as conn, conn.transaction():
            if good:
                tick = max((i.message for i in good), key=lambda t: t.at)
                await repo.advance_clock(conn, tick.at)
                due = await repo.due_requests(conn, tick.at)
                for request in due:
                    messages.add(request.time_out(tick.at), tick)
                await repo.save_requests(conn, due)
            committed = await enqueue(conn, repo.SCHEMA, messages.out)
        self.runtime.relay.push(committed)
