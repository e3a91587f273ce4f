"""Plays a scenario through the real services: HTTP calls to their APIs, VM power changes as
vCenter hooks report them, and clock ticks. It never writes to a service's tables.

Every sync point (a day): tick the clock to it, wait until the whole system is quiet (every
consumer group has committed up to the end of its topic, twice in a row), then the
companies act, then their VMs' power changes for the day go to `vcenter.events`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from aiokafka import AIOKafkaProducer

from deploy.sim.scenario import (
    POWER_OFFSET,
    SYNC,
    Action,
    Company,
    Scenario,
    running_wanted,
    ticker_of,
)
from deploy.sim.system import Portal, Quiet, WalletFeed, check_stop, stop_within
from shared.clock import publish_tick
from shared.contracts.base import deterministic_id
from shared.contracts.vcenter import VmPoweredOff, VmPoweredOn
from shared.settings import Settings
from shared.topics import VCENTER_EVENTS

TERMINAL = ("succeeded", "rejected", "failed", "cancelled")
T = TypeVar("T")


@dataclass
class Observed:
    """What the services reported, for the comparison and the report."""

    wallets: dict[str, UUID] = field(default_factory=dict)
    organisations: dict[str, UUID] = field(default_factory=dict)
    vms: dict[str, UUID] = field(default_factory=dict)  # scenario key -> vm id
    requests: dict[tuple[datetime, str], str] = field(default_factory=dict)
    request_reasons: dict[tuple[datetime, str], str] = field(default_factory=dict)
    refunds: dict[tuple[datetime, str], str] = field(default_factory=dict)
    suspended_since: dict[str, datetime] = field(default_factory=dict)
    suspensions: list[tuple[str, datetime]] = field(default_factory=list)
    daily_balance: dict[str, list[tuple[datetime, int]]] = field(default_factory=dict)
    # VMs that exist (not deleted) per company and day, suspended ones included
    fleet: dict[tuple[str, datetime], int] = field(default_factory=dict)
    # of them, those of an organisation not suspended for funds (they run in its rhythm)
    fleet_not_suspended: dict[tuple[str, datetime], int] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per phase
    refund_amounts: list[tuple[str, int, int]] = field(default_factory=list)  # ticker, charge,
    #   amount refunded


class Driver:
    def __init__(self, scenario: Scenario, settings: Settings, portal: Portal,
                 on_day: Callable[[datetime, int], Awaitable[None] | None] | None = None
                 ) -> None:
        self.s = scenario
        self.settings = settings
        self.portal = portal
        self.quiet = Quiet(settings)
        self.feed = WalletFeed(settings)
        self.seen = Observed()
        self.paid: set[str] = set()  # companies that paid at the sync point
        self.on_day = on_day or (lambda at, refused: None)

    async def run(self) -> Observed:
        self.producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap_servers,
                                         enable_idempotence=True, linger_ms=5)
        await self.producer.start()
        await self.quiet.start()
        await self.feed.start()
        try:
            points = self.s.sync_points()
            timed = self.timed
            for index, at in enumerate(points):
                await timed("tick", publish_tick(self.producer, self.settings, at))
                await timed("quiet after the tick", self.quiet.wait())
                if index == 0:
                    await timed("opening", self.open_wallets(at))
                await timed("reading wallets", self.observe(at, self.s.companies))
                if index == len(points) - 1:
                    break
                if await timed("actions", self.act(at, first=index == 0)):
                    await timed("quiet after actions", self.quiet.wait())
                    # a payment may have restored funds
                    await timed("reading wallets", self.observe(
                        at, [c for c in self.s.companies if c.ticker in self.paid],
                        balances=False))
                await timed("power changes", self.power(at))
                self.count_fleet(at)
                day_done = self.on_day(
                    at, sum(1 for v in self.seen.requests.values() if v == "rejected"))
                if day_done is not None:  # the caller holds the next day back until it is done
                    await day_done
            return self.seen
        finally:
            # Bounded: after Ctrl-C the broker may already be gone, and a client's goodbye
            # would wait for it for its whole request timeout.
            await stop_within(self.feed.stop(), self.quiet.stop(), self.producer.stop())

    async def timed(self, phase: str, step: Awaitable[T]) -> T:
        """Runs a step, adding its wall time to the phase's (where a run's time goes)."""
        check_stop()
        started = time.monotonic()
        try:
            return await step
        finally:
            self.seen.timings[phase] = self.seen.timings.get(phase, 0.0) + (
                time.monotonic() - started)

    # --- opening -----------------------------------------------------------------------------

    async def open_wallets(self, at: datetime) -> None:
        resellers_first = sorted(self.s.companies, key=lambda c: c.kind != "reseller")
        for company in resellers_first:
            reseller = self.seen.organisations.get(company.reseller or "")
            response = await self.portal.call("POST", "wallet", "/organisations", json={
                "name": company.name, "kind": company.kind,
                "reseller_id": str(reseller) if reseller else None,
                "billing_mode": company.billing_mode, "currency": company.currency,
                "credit_limit_minor": company.credit_limit, "low_balance_threshold_minor": 0})
            response.raise_for_status()
            opened = response.json()
            await self.portal.opened(UUID(opened["organisation_id"]), company.kind)
            self.seen.organisations[company.ticker] = UUID(opened["organisation_id"])
            self.seen.wallets[company.ticker] = UUID(opened["wallet_id"])
        await asyncio.gather(*(self.pay(c, at, c.opening_top_up, "opening")
                               for c in self.s.companies if c.opening_top_up))
        await self.quiet.wait()  # provisioning learns of every organisation

    async def pay(self, company: Company, at: datetime, amount: int, why: str) -> None:
        self.paid.add(company.ticker)
        payment_id = f"sim-{self.s.seed}-{company.ticker}-{at:%Y%m%d}-{why.replace(' ', '-')}"
        await self.portal.pay(self.seen.wallets[company.ticker], payment_id, amount, at,
                              company.currency)

    # --- each sync point ---------------------------------------------------------------------

    async def observe(self, at: datetime, companies: list[Company], *,
                      balances: bool = True) -> None:
        """Each wallet's balance (for the report), from the wallet's events as the portal
        would follow them, and whether provisioning has suspended the organisation for
        funds: asked of provisioning when the wallet's word and what we saw last disagree —
        depleted but not seen suspended, or seen suspended but funded again (after a quiet
        period provisioning agrees with the wallet). Not asked again and again while a
        company stays suspended: that would make the work given to provisioning grow with
        the number of companies that ran dry, not with what happens."""
        await self.feed.drain()

        async def one(company: Company) -> None:
            wallet_id = self.seen.wallets[company.ticker]
            if balances:
                self.seen.daily_balance.setdefault(company.ticker, []).append(
                    (at, self.feed.balances.get(str(wallet_id), 0)))
            if (str(wallet_id) in self.feed.depleted) == (
                    company.ticker in self.seen.suspended_since):
                return
            response = await self.portal.call(
                "GET", "provisioning", f"/organisations/{self.seen.organisations[company.ticker]}")
            response.raise_for_status()
            if response.json()["suspended"]:
                if company.ticker not in self.seen.suspended_since:
                    self.seen.suspended_since[company.ticker] = at
                    self.seen.suspensions.append((company.ticker, at))
            else:
                self.seen.suspended_since.pop(company.ticker, None)

        await asyncio.gather(*(one(c) for c in companies))

    async def act(self, at: datetime, *, first: bool) -> bool:
        """The companies' actions at a sync point; whether there were any."""
        payments = []
        self.paid = set()
        for company in self.s.companies:
            if company.pays_invoices and at.day == 3 and at - timedelta(days=3) >= self.s.start:
                payments.append(self.pay_invoice(company, at))
            since = self.seen.suspended_since.get(company.ticker)
            if (company.late_top_up_after_days is not None and since is not None
                    and at - since >= timedelta(days=company.late_top_up_after_days)):
                payments.append(self.pay(company, at, company.late_top_up, "late top-up"))
        await asyncio.gather(*payments)
        actions = self.s.actions.get(at, [])
        await asyncio.gather(*(self.refund(a) for a in actions if a.kind == "refund"))
        deletes = [self.delete(a) for a in actions if a.kind == "delete"]
        if deletes:
            await asyncio.gather(*deletes)
            await self.quiet.wait()  # a deleted VM's hold is released before anyone asks again
        by_company: dict[str, list[Action]] = {}
        for action in actions:
            if action.kind in ("resize", "request"):
                by_company.setdefault(action.ticker, []).append(action)
        await asyncio.gather(*(self.fleet(a) for a in by_company.values()))
        if first:
            await self.quiet.wait()
            await asyncio.gather(*(self.enable_auto_top_up(c) for c in self.s.companies
                                   if c.auto_top_up))
        return bool(payments or actions or first)

    async def pay_invoice(self, company: Company, at: datetime) -> None:
        month = (at - timedelta(days=3)).strftime("%Y-%m")
        wallet_id = self.seen.wallets[company.ticker]
        response = await self.portal.call("GET", "billing",
                                          f"/wallets/{wallet_id}/statements/{month}")
        response.raise_for_status()
        owed = response.json()["charges"]["amount_minor"]
        if owed > 0:
            await self.pay(company, at, owed, "invoice payment")

    async def enable_auto_top_up(self, company: Company) -> None:
        assert company.auto_top_up is not None
        auto = company.auto_top_up
        response = await self.portal.call(
            "PUT", "wallet", f"/wallets/{self.seen.wallets[company.ticker]}/auto-topup",
            json={"enabled": True, "threshold_minor": auto.threshold,
                  "amount_minor": auto.amount, "card_token": auto.card_token},
            headers=self.portal.acting_for(self.seen.organisations[company.ticker]))
        response.raise_for_status()

    async def refund(self, action: Action) -> None:
        assert action.hour is not None
        vm_id = self.seen.vms.get(action.vm)
        key = (action.at, action.vm)
        if vm_id is None:
            self.seen.refunds[key] = "skipped"
            return
        refund_id = deterministic_id("simulation.refund", self.s.seed, action.vm, action.at)
        outcome, charge = await self.portal.refund(
            self.seen.wallets[action.ticker], vm_id, action.hour, action.percent, refund_id)
        self.seen.refunds[key] = outcome
        if outcome == "applied":
            self.seen.refund_amounts.append((action.ticker, charge,
                                             charge * action.percent // 100))

    async def delete(self, action: Action) -> None:
        vm_id = self.seen.vms.get(action.vm)
        if vm_id is None or action.vm in self.seen.gone:
            return
        response = await self.portal.call(
            "DELETE", "provisioning", f"/vms/{vm_id}",
            headers=self.portal.acting_for(self.seen.organisations[action.ticker]))
        response.raise_for_status()
        self.seen.gone.add(action.vm)

    async def fleet(self, actions: list[Action]) -> None:
        """One company's requests and resizes, one after the other: each decided before the
        next asks for funds."""
        for action in actions:
            assert action.size is not None
            key = (action.at, action.vm)
            organisation = self.seen.organisations[action.ticker]
            idempotency = {"Idempotency-Key": f"sim-{self.s.seed}-{action.vm}-{action.at:%Y%m%d}",
                           **self.portal.acting_for(organisation)}
            if action.kind == "resize":
                vm_id = self.seen.vms.get(action.vm)
                if vm_id is None or action.vm in self.seen.gone:
                    self.seen.requests[key] = "skipped"
                    continue
                response = await self.portal.call("POST", "provisioning",
                                                  f"/vms/{vm_id}/resize",
                                                  json=action.size.body(), headers=idempotency)
            else:
                response = await self.portal.call("POST", "provisioning", "/vm-requests", json={
                    "organisation_id": str(organisation),
                    "name": action.vm, **action.size.body()}, headers=idempotency)
            if response.status_code == 422:  # e.g. a resize to the size the VM has, or no
                # price yet in the wallet's currency
                self.seen.requests[key] = "invalid"
                self.seen.request_reasons[key] = response.json().get("detail", "")
                continue
            response.raise_for_status()
            view = await self._terminal(response.json()["request_id"], organisation)
            self.seen.requests[key] = "succeeded" if view["status"] == "succeeded" else (
                "rejected" if view["status"] == "rejected" else view["status"])
            self.seen.request_reasons[key] = view.get("reason") or ""
            if action.kind == "request" and view["status"] == "succeeded":
                self.seen.vms[action.vm] = UUID(view["vm_id"])

    async def _terminal(self, request_id: str, organisation: UUID, timeout: float = 120
                        ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            check_stop()
            response = await self.portal.call("GET", "provisioning", f"/vm-requests/{request_id}",
                                              headers=self.portal.acting_for(organisation))
            view: dict[str, Any] = response.json()
            if view["status"] in TERMINAL:
                return view
            if loop.time() > deadline:
                raise TimeoutError(f"request {request_id} still {view['status']}")
            await asyncio.sleep(0.02)

    async def power(self, at: datetime) -> None:
        """The day's power changes of every live VM of an organisation not suspended, as
        vCenter hooks report them (the same plan as the oracle's)."""
        topic = self.settings.topic(VCENTER_EVENTS.name)
        sends = []
        for key, vm_id in self.seen.vms.items():
            company = self.s.company(ticker_of(key))
            if key in self.seen.gone or company.ticker in self.seen.suspended_since:
                continue
            previous = None
            for hour in range(int(SYNC / timedelta(hours=1))):
                start = at + timedelta(hours=hour)
                wanted = running_wanted(company.profile, start)
                if wanted != previous:
                    when = start + POWER_OFFSET
                    model = VmPoweredOn if wanted else VmPoweredOff
                    event = model(event_id=deterministic_id("simulation", vm_id, when, wanted),
                                  vm_id=vm_id, occurred_at=when)
                    sends.append(await self.producer.send(
                        topic, event.model_dump_json().encode(), key=str(vm_id).encode()))
                previous = wanted
        await asyncio.gather(*sends)

    def count_fleet(self, at: datetime) -> None:
        for company in self.s.companies:
            existing = self.seen.fleet[(company.ticker, at)] = sum(
                1 for key in self.seen.vms
                if key not in self.seen.gone and ticker_of(key) == company.ticker)
            self.seen.fleet_not_suspended[(company.ticker, at)] = (
                0 if company.ticker in self.seen.suspended_since else existing)
