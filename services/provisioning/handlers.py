"""Thin handlers: Kafka batches and HTTP commands in, domain calls, facts out as messages.

Each Kafka batch is one transaction: inbox claim (idempotency), row locks (organisations,
then requests, then VMs), the domain's decisions, then the writes and the outgoing messages
(outbox) together. HTTP VM requests are stored with their ReserveFunds in one statement. A
crash anywhere leaves either all of it or none of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import structlog
from pydantic import TypeAdapter

from services.provisioning import repository as repo
from services.provisioning.domain import (
    AskForFunds,
    Conflict,
    Fact,
    InvalidRequest,
    Organisation,
    PowerState,
    RequestKind,
    RequestStatus,
    UnknownOrganisation,
    Vm,
    VmRequest,
    event_now,
    new_create_request,
    new_resize_request,
    vm_from_created,
)
from services.provisioning.intake import IntakeQueue
from services.provisioning.messages import Messages
from shared.consumer import Incoming, Records, claim_new, dead_letter, dead_letters, parse_records
from shared.contracts.base import Envelope, deterministic_id
from shared.contracts.clock import ClockTick
from shared.contracts.portal import RequestVm
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
from shared.contracts.vm import VmSpec
from shared.contracts.wallet import (
    FundsReserved,
    WalletDecision,
    WalletDepleted,
    WalletEvent,
    WalletFundsRestored,
    WalletOpened,
)
from shared.event_time import event_time_now
from shared.outbox import Outgoing, Row, enqueue
from shared.pricing import DEFAULT_BOOK, RateCardBook
from shared.runtime import ServiceRuntime

CONSUMER = "provisioning"
RESEND_DELAY_S = 1.0
SEND_ATTEMPTS = 3

log = structlog.get_logger(__name__)

PORTAL: TypeAdapter[RequestVm] = TypeAdapter(RequestVm)
DECISIONS: TypeAdapter[Any] = TypeAdapter(WalletDecision)
VCENTER: TypeAdapter[Any] = TypeAdapter(VcenterStreamItem)
TICKS: TypeAdapter[ClockTick] = TypeAdapter(ClockTick)
WALLET_FACTS: TypeAdapter[Any] = TypeAdapter(WalletEvent)


def request_id_for(organisation_id: UUID, idempotency_key: str) -> UUID:
    """The portal's key decides the request, whichever way (HTTP or Kafka) it came in."""
    return deterministic_id("provisioning.request", organisation_id, idempotency_key)


def vm_id_for(request_id: UUID) -> UUID:
    return deterministic_id("provisioning.vm", request_id)


def resize_request_id(vm_id: UUID, idempotency_key: str) -> UUID:
    return deterministic_id("provisioning.resize", vm_id, idempotency_key)


def wall_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Submission:
    """A VM request from the portal, by HTTP (cause None) or Kafka (cause the message)."""

    organisation_id: UUID
    idempotency_key: str
    name: str
    spec: VmSpec
    at: datetime | None = None  # the portal's event time; None: now
    cause: Envelope | None = None


@dataclass(frozen=True)
class Accepted:
    request: VmRequest
    new: bool


@dataclass(frozen=True)
class Refused:
    status: int
    reason: str


class NotFound(LookupError):
    pass


class ProvisioningHandlers:
    def __init__(self, runtime: ServiceRuntime, book: RateCardBook = DEFAULT_BOOK) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.book = book
        self.funds_timeout = timedelta(seconds=self.settings.hold_ttl_seconds)
        self.vcenter_timeout = timedelta(seconds=self.settings.vcenter_timeout_seconds)
        self.intake: IntakeQueue[Submission, Accepted | Refused] = IntakeQueue(
            lambda: self.pool, self.submit)
        self._known_organisations: dict[UUID, Organisation] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._awaiting_funds: set[UUID] | None = None  # at the last resend sweep

    @property
    def pool(self) -> asyncpg.Pool:
        return self.runtime.pool

    async def now(self, conn: asyncpg.Connection) -> datetime:
        return event_time_now(await repo.clock_now(conn), wall_clock(), self.settings.event_clock)

    # --- intake: HTTP and portal.vm-requests ---------------------------------------------

    async def submit(self, conn: asyncpg.Connection, submissions: Sequence[Submission]
                     ) -> list[Accepted | Refused]:
        """Accept HTTP submissions: one read and one write, no explicit transaction; then
        their ReserveFunds go to Kafka at once, not through the outbox, whose relay round
        trips were most of the time from a POST to the wallet's decision. The stored request
        is the durable record: a failed send is repeated, and what a crash left unsent is
        sent again by `resend_reservations`. The wallet claims a reservation by its request
        id, so a repeat changes nothing."""
        results, unsent = await self._intake(conn, submissions, Messages(self.settings),
                                             queue=False)
        self._publish(unsent)
        return results

    async def resend_reservations(self) -> int:
        """Send the ReserveFunds of requests still awaiting funds again, for what a crash,
        or an error between the insert and the send, left unsent: at start all of them,
        then (every `reservation_resend_interval_s`) those already waiting at the last
        sweep, so a request just received or a wallet merely busy is not sent twice."""
        async with self.pool.acquire() as conn:
            waiting = await repo.requests_awaiting_funds(conn)
        before, self._awaiting_funds = self._awaiting_funds, {r.request_id for r in waiting}
        due = [r for r in waiting if before is None or r.request_id in before]
        self._publish(self._reservations(due))
        return len(due)

    def _reservations(self, requests: Sequence[VmRequest]) -> list[Outgoing]:
        """The ReserveFunds of stored requests, as first sent (same event ids)."""
        messages = Messages(self.settings)
        messages.add([AskForFunds(r) for r in requests], None)
        return messages.out

    def _publish(self, messages: Sequence[Outgoing]) -> None:
        """Send in the background, so a slow or unreachable broker never holds up intake
        (which needs only the database); a failed send is tried twice more, a second apart,
        and after that left to the periodic sweep."""
        if not messages:
            return
        rows = [m.row for m in messages]
        sending = asyncio.create_task(self._send(rows))
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)

    async def _send(self, rows: list[Row]) -> None:
        for attempt in range(1, SEND_ATTEMPTS + 1):
            try:
                await asyncio.gather(*await self.runtime.relay.sender.send(rows))
                return
            except Exception:
                log.warning("publishing reservations failed", count=len(rows),
                            attempt=attempt, exc_info=True)
                if attempt < SEND_ATTEMPTS:
                    await asyncio.sleep(RESEND_DELAY_S)
        # The requests stay awaiting funds: the periodic sweep sends them again.

    async def settle(self, timeout: float = 10) -> None:
        """At stop: wait a while for reservations still being sent, then give up on them
        (the requests are stored; the next start sends their reservations)."""
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=timeout)
        for sending in list(self._sending):
            sending.cancel()

    async def _organisations(self, conn: asyncpg.Connection, ids: set[UUID]
                             ) -> dict[UUID, Organisation]:
        """Intake needs only an organisation's wallet and currency, which never change once
        the wallet is opened, so those found are remembered."""
        missing = {i for i in ids if i not in self._known_organisations}
        if missing:
            found = await repo.organisations(conn, missing)
            for org_id, org in found.items():
                self._known_organisations[org_id] = replace(org, suspended=False)
        return {i: self._known_organisations[i] for i in ids if i in self._known_organisations}

    async def _intake(self, conn: asyncpg.Connection, submissions: Sequence[Submission],
                      messages: Messages, *, queue: bool = True
                      ) -> tuple[list[Accepted | Refused], list[Outgoing]]:
        """Store new requests; their messages go into the outbox with them (`queue`), or
        are returned, those of the requests actually stored, for the caller to publish."""
        ids = [request_id_for(s.organisation_id, s.idempotency_key) for s in submissions]
        orgs = await self._organisations(conn, {s.organisation_id for s in submissions})
        clock, known = await repo.clock_and_requests(conn, ids)
        now = event_time_now(clock, wall_clock(), self.settings.event_clock)
        results: list[Accepted | Refused] = []
        created: dict[UUID, VmRequest] = {}
        outgoing_by_request: list[tuple[UUID, Outgoing]] = []
        resend: list[Outgoing] = []
        for s, request_id in zip(submissions, ids, strict=True):
            prior = known.get(request_id) or created.get(request_id)
            if prior is not None:
                results.append(self._repeat(prior, s))
                if (not queue and request_id in known and isinstance(results[-1], Accepted)
                        and prior.status is RequestStatus.AWAITING_FUNDS):
                    # The portal asks again while the first send may never have happened.
                    resend += self._reservations([prior])
                continue
            try:
                org = orgs.get(s.organisation_id)
                if org is None:
                    raise UnknownOrganisation(f"unknown organisation {s.organisation_id}")
                request, facts = new_create_request(
                    request_id=request_id, idempotency_key=s.idempotency_key, organisation=org,
                    vm_id=vm_id_for(request_id), name=s.name, spec=s.spec, book=self.book,
                    now=event_now(clock, s.at) if s.at else now,
                    funds_timeout=self.funds_timeout)
            except InvalidRequest as error:
                status = 404 if isinstance(error, UnknownOrganisation) else 422
                results.append(Refused(status, str(error)))
                continue
            created[request_id] = request
            results.append(Accepted(request, True))
            before = len(messages.out)
            messages.add(facts, s.cause)
            outgoing_by_request += [(request_id, o) for o in messages.out[before:]]
        inserted = await repo.insert_requests(conn, list(created.values()),
                                              outgoing_by_request if queue else ())
        unsent = [] if queue else [o for r, o in outgoing_by_request if r in inserted] + resend
        raced = [r for r in created if r not in inserted]
        if raced:  # a concurrent writer stored the same key first: answer with theirs
            theirs = await repo.requests_by_id(conn, raced)
            results = [Accepted(theirs[x.request.request_id], False)
                       if isinstance(x, Accepted) and x.request.request_id in theirs else x
                       for x in results]
        return results, unsent

    @staticmethod
    def _repeat(prior: VmRequest, s: Submission) -> Accepted | Refused:
        if prior.same_intent(s.name, s.spec):
            return Accepted(prior, False)
        # The key is not repeated back: answers never echo the caller's input.
        return Refused(409, "this Idempotency-Key was already used for a different request "
                            f"({prior.request_id})")

    async def _young_enough(self, conn: asyncpg.Connection, items: Sequence[Incoming[Any]],
                            messages: Messages) -> list[Incoming[Any]]:
        """Messages dated before the inbox window are refused (dead letters naming why):
        their inbox rows may be pruned, so a repeat could no longer be told."""
        young, old = self.runtime.refuse_expired(items, await repo.clock_now(conn))
        messages.out += dead_letters(self.settings, CONSUMER, old)
        return young

    async def on_portal_requests(self, records: Records) -> None:
        good, bad = parse_records(records, PORTAL)
        messages = Messages(self.settings)
        messages.out += dead_letters(self.settings, CONSUMER, bad)
        async with self.pool.acquire() as conn, conn.transaction():
            submissions = [Submission(m.organisation_id, m.idempotency_key, m.name, m.spec,
                                      m.occurred_at, m) for m in (i.message for i in good)]
            results, _ = await self._intake(conn, submissions, Messages(self.settings))
            for item, result in zip(good, results, strict=True):
                if isinstance(result, Refused):
                    messages.out.append(dead_letter(self.settings, CONSUMER, item.record,
                                                    result.reason))
            await enqueue(conn, repo.SCHEMA, messages.out)

    # --- wallet.decisions ----------------------------------------------------------------

    async def on_wallet_decisions(self, records: Records) -> None:
        good, bad = parse_records(records, DECISIONS)
        messages = Messages(self.settings)
        messages.out += dead_letters(self.settings, CONSUMER, bad)
        async with self.pool.acquire() as conn, conn.transaction():
            fresh, reused = await claim_new(
                conn, repo.SCHEMA, await self._young_enough(conn, good, messages))
            messages.out += dead_letters(self.settings, CONSUMER, reused)
            requests = await repo.requests_by_id(
                conn, (i.message.request_id for i in fresh), "FOR UPDATE")
            clock = await repo.clock_now(conn)
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
            fresh, reused = await claim_new(
                conn, repo.SCHEMA, await self._young_enough(conn, vm_events, messages))
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

    # --- wallet.events: the organisation table, suspension and resume ----------------------

    async def on_wallet_events(self, records: Records) -> None:
        good, bad = parse_records(records, WALLET_FACTS)
        messages = Messages(self.settings)
        messages.out += dead_letters(self.settings, CONSUMER, bad)
        opened = [i.message for i in good if isinstance(i.message, WalletOpened)]
        funds = [i for i in good if isinstance(i.message, WalletDepleted | WalletFundsRestored)]
        async with self.pool.acquire() as conn, conn.transaction():
            await repo.upsert_organisations(conn, [
                Organisation(m.organisation_id, m.wallet_id, m.currency, m.billing_mode)
                for m in opened], [m.occurred_at for m in opened])
            fresh, reused = await claim_new(
                conn, repo.SCHEMA, await self._young_enough(conn, funds, messages))
            messages.out += dead_letters(self.settings, CONSUMER, reused)
            org_ids = {i.message.organisation_id for i in fresh}
            # NO KEY UPDATE: blocks the vCenter consumer's share lock (so a power-on and a
            # depletion see each other) but not new requests referencing the organisation.
            orgs = await repo.organisations(conn, org_ids, "FOR NO KEY UPDATE")
            vms = await repo.live_vms_of_organisations(conn, org_ids, "FOR UPDATE")
            clock = await repo.clock_now(conn)
            for item in fresh:
                m = item.message
                org = orgs.get(m.organisation_id)
                if org is None:
                    messages.out.append(dead_letter(self.settings, CONSUMER, item.record,
                                                    f"unknown organisation {m.organisation_id}"))
                    continue
                mine = [vm for vm in vms if vm.organisation_id == org.organisation_id]
                now = event_now(clock, m.occurred_at)
                if isinstance(m, WalletDepleted):
                    messages.add(org.funds_depleted(mine, now), m)
                else:
                    messages.add(org.funds_restored(mine, now), m)
            await repo.save_suspension(conn, list(orgs.values()))
            await repo.save_vms(conn, vms)
            committed = await enqueue(conn, repo.SCHEMA, messages.out)
        self.runtime.relay.push(committed)

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
