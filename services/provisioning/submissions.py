"""VM requests coming in, by HTTP and on `portal.vm-requests`: each stored once by its
idempotency key, its ReserveFunds sent at once (and again by a sweep for what a crash left
unsent)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from uuid import UUID

import asyncpg
import structlog
from pydantic import TypeAdapter

from services.provisioning import repository as repo
from services.provisioning.domain import (
    AskForFunds,
    InvalidRequest,
    Organisation,
    RequestStatus,
    UnknownOrganisation,
    VmRequest,
    event_now,
    new_create_request,
)
from services.provisioning.flow import CONSUMER, ProvisioningFlow, wall_clock
from services.provisioning.intake import IntakeQueue
from services.provisioning.messages import Messages
from shared.consumer import Records, dead_letter, dead_letters, parse_records
from shared.contracts.base import Envelope, deterministic_id
from shared.contracts.portal import RequestVm
from shared.contracts.vm import VmSpec
from shared.event_time import event_time_now
from shared.outbox import Outgoing, Row, enqueue
from shared.pricing import DEFAULT_BOOK, RateCardBook
from shared.runtime import ServiceRuntime

RESEND_DELAY_S = 1.0
SEND_ATTEMPTS = 3

log = structlog.get_logger(__name__)

PORTAL: TypeAdapter[RequestVm] = TypeAdapter(RequestVm)


def request_id_for(organisation_id: UUID, idempotency_key: str) -> UUID:
    """The portal's key decides the request, whichever way (HTTP or Kafka) it came in."""
    return deterministic_id("provisioning.request", organisation_id, idempotency_key)


def vm_id_for(request_id: UUID) -> UUID:
    return deterministic_id("provisioning.vm", request_id)


def resize_request_id(vm_id: UUID, idempotency_key: str) -> UUID:
    return deterministic_id("provisioning.resize", vm_id, idempotency_key)


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


class SubmissionFlow(ProvisioningFlow):
    def __init__(self, runtime: ServiceRuntime, book: RateCardBook = DEFAULT_BOOK) -> None:
        super().__init__(runtime, book)
        self.intake: IntakeQueue[Submission, Accepted | Refused] = IntakeQueue(
            lambda: self.pool, self.submit)
        self._known_organisations: dict[UUID, Organisation] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._awaiting_funds: set[UUID] | None = None  # at the last resend sweep

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
