"""The main job: a month of a cloud provider's business, simulated in event time.

Companies in several industries open wallets, top up, and ask for VMs through the portal
API; the provisioning saga asks the wallet, the vCenter simulator builds what was funded;
customers power VMs on and off in their industry's rhythm (as vCenter hooks report it);
a clock ticks hour by hour; metering, billing and the wallet do the rest. At the end every
month that closed is checked: statements, invoices, the ledger and the runtime checks.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from aiokafka import AIOKafkaProducer

from shared.api_client import client as api_client
from shared.api_keys import issue_key_at
from shared.auth import Role
from shared.clock import publish_tick
from shared.contracts.base import deterministic_id
from shared.contracts.vcenter import VmPoweredOff, VmPoweredOn
from shared.money import Money
from shared.settings import Settings
from shared.topics import VCENTER_EVENTS
from shared.webhooks import webhook_headers


def business_hours(start: int, end: int, weekdays_only: bool = False):  # type: ignore[no-untyped-def]
    def on(at: datetime) -> bool:
        if weekdays_only and at.weekday() >= 5:
            return False
        return start <= at.hour < end

    return on


def always(at: datetime) -> bool:
    return True


def commodity_cycle(at: datetime) -> bool:
    """Mining runs in campaigns: ten days on, four days off."""
    return at.toordinal() % 14 < 10


@dataclass
class Company:
    name: str
    industry: str
    billing_mode: str
    top_up_minor: int
    vms: list[str]
    credit_limit_minor: int = 0
    reseller: str | None = None
    kind: str = "customer"
    organisation_id: UUID | None = None
    wallet_id: UUID | None = None
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)


PATTERNS = {
    "banking": always,  # 24/7
    "telecoms": always,
    "healthcare": business_hours(6, 20),
    "retail": business_hours(8, 22),
    "insurance": business_hours(7, 19, weekdays_only=True),
    "mining": commodity_cycle,
    "reseller": always,
}

COMPANIES = [
    Company("Highveld Bank", "banking", "INVOICE", 0, ["enterprise", "large", "large"],
            credit_limit_minor=1_000_000),
    Company("Karoo Mining", "mining", "PAYG", 500_000, ["large", "medium"]),
    Company("Umhlanga Health", "healthcare", "PAYG", 200_000, ["medium", "small", "small"]),
    Company("Jozi Retail", "retail", "PAYG", 1_000_000, ["medium", "medium", "large"]),
    Company("Fynbos Insurance", "insurance", "INVOICE", 0, ["large", "medium"],
            credit_limit_minor=400_000),
    Company("Table Bay Telecoms", "telecoms", "PAYG", 1_000_000, ["enterprise"]),
    # The seed's low-balance wallet: R5 asks for a VM of every tier; all are refused.
    Company("Tiny Startup", "retail", "PAYG", 500, ["small", "medium", "large", "enterprise"]),
    # Enough for one month of one small VM only: the second is refused, and the first runs
    # the wallet dry before the month ends (suspension follows).
    Company("Lean Studio", "banking", "PAYG", 15_000, ["small", "small"]),
    Company("Cloud Partners", "reseller", "PAYG", 300_000, ["small"], kind="reseller"),
    Company("Partner Client A", "healthcare", "PAYG", 150_000, ["small", "medium"],
            reseller="Cloud Partners"),
]


def simulation_start(days: int, today: datetime) -> datetime:
    """Ahead of the wall clock (the services' clocks never run behind it), and placed so the
    run crosses a month end: the month before it closes within the run."""
    month_end = datetime(today.year + 1, 2, 1, tzinfo=UTC)
    return month_end - timedelta(days=max(days - 2, 1))


class Simulation:
    def __init__(self, settings: Settings, urls: dict[str, str], days: int) -> None:
        self.settings = settings
        self.urls = urls
        self.days = days
        self.start = simulation_start(days, datetime.now(UTC))
        self.companies = [Company(**{k: v for k, v in c.__dict__.items()
                                     if k not in ("requests",)}) for c in COMPANIES]
        self.power: dict[UUID, bool] = {}
        self.vm_company: dict[UUID, Company] = {}
        self.keys: dict[str, str] = {}  # each company's API key

    async def run(self) -> bool:
        self.producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap_servers,
                                         enable_idempotence=True, linger_ms=5)
        await self.producer.start()
        try:
            operator = await issue_key_at(self.settings.database_url, name="demo operator",
                                          role=Role.OPERATOR)
            async with api_client(operator) as self.http:
                await publish_tick(self.producer, self.settings, self.start)
                await self.open_wallets()
                await self.request_vms()
                await self.run_clock()
                return await self.report()
        finally:
            await self.producer.stop()

    def url(self, service: str, path: str) -> str:
        return f"{self.urls[service]}{path}"

    async def open_wallets(self) -> None:
        by_name = {c.name: c for c in self.companies}
        for company in self.companies:
            reseller = by_name[company.reseller].organisation_id if company.reseller else None
            response = await self.http.post(self.url("wallet", "/organisations"), json={
                "name": company.name, "kind": company.kind, "reseller_id":
                    str(reseller) if reseller else None, "billing_mode": company.billing_mode,
                "credit_limit_minor": company.credit_limit_minor,
                "low_balance_threshold_minor": 5_000})
            response.raise_for_status()
            opened = response.json()
            company.organisation_id = UUID(opened["organisation_id"])
            company.wallet_id = UUID(opened["wallet_id"])
            # The company's portal acts for it with a key of its own.
            self.keys[company.name] = await issue_key_at(
                self.settings.database_url, name=f"portal of {company.name}",
                role=Role.RESELLER if company.kind == "reseller" else Role.ORGANISATION,
                organisation_id=company.organisation_id)
            if company.top_up_minor:
                body = json.dumps({
                    "payment_id": f"sim-{uuid4().hex[:10]}", "wallet_id": str(company.wallet_id),
                    "amount_minor": company.top_up_minor, "status": "succeeded",
                    "occurred_at": self.start.isoformat()}).encode()
                paid = await self.http.post(
                    self.url("wallet", "/webhooks/payments"), content=body,
                    headers=webhook_headers(self.settings.payment_webhook_secret, body))
                paid.raise_for_status()
        print(f"opened {len(self.companies)} wallets; simulated time starts "
              f"{self.start:%Y-%m-%d %H:%M} UTC and runs {self.days} days")

    async def request_vms(self) -> None:
        for company in self.companies:
            await self._until(lambda c=company: self._known_to_provisioning(c),
                              f"provisioning to learn of {company.name}")
        for company in self.companies:
            for n, tier in enumerate(company.vms):
                name = f"{company.name.split()[0].lower()}-{tier}-{n}"
                response = await self.http.post(
                    self.url("provisioning", "/vm-requests"),
                    json={"organisation_id": str(company.organisation_id), "name": name,
                          "tier": tier},
                    headers={"Idempotency-Key": f"sim-{company.wallet_id}-{n}",
                             "Authorization": f"Bearer {self.keys[company.name]}"})
                response.raise_for_status()
                company.requests[name] = response.json()
        for company in self.companies:
            for name, request in list(company.requests.items()):
                company.requests[name] = await self._until(
                    lambda r=request: self._terminal(r["request_id"]), f"request {name}")
                final = company.requests[name]
                if final["status"] == "succeeded":
                    vm_id = UUID(final["vm_id"])
                    self.power[vm_id] = True
                    self.vm_company[vm_id] = company
        for company in self.companies:
            outcomes = [f"{r['spec']['tier']}:{r['status']}" for r in company.requests.values()]
            print(f"  {company.name:<20} {company.billing_mode:<8} {', '.join(outcomes)}")

    async def _known_to_provisioning(self, company: Company) -> bool:
        response = await self.http.get(
            self.url("provisioning", f"/organisations/{company.organisation_id}"))
        return response.status_code == 200

    async def _terminal(self, request_id: str) -> dict[str, Any] | None:
        response = await self.http.get(self.url("provisioning", f"/vm-requests/{request_id}"))
        view: dict[str, Any] = response.json()
        return view if view["status"] in ("succeeded", "rejected", "failed", "cancelled") else None

    async def run_clock(self) -> None:
        topic = self.settings.topic(VCENTER_EVENTS.name)
        for hour in range(self.days * 24):
            at = self.start + timedelta(hours=hour)
            sends = []
            for vm_id, company in self.vm_company.items():
                wanted = PATTERNS[company.industry](at)
                if wanted != self.power[vm_id]:
                    self.power[vm_id] = wanted
                    model = VmPoweredOn if wanted else VmPoweredOff
                    # Customers act a quarter past the hour; vCenter hooks report it.
                    event = model(event_id=deterministic_id("simulation", vm_id, at, wanted),
                                  vm_id=vm_id, occurred_at=at + timedelta(minutes=15))
                    sends.append(await self.producer.send(
                        topic, event.model_dump_json().encode(), key=str(vm_id).encode()))
            await asyncio.gather(*sends)
            await publish_tick(self.producer, self.settings, at + timedelta(hours=1))
            if hour % 24 == 23:
                await self.settle(at + timedelta(hours=1))
        end = self.start + timedelta(days=self.days)
        print(f"clock reached {end:%Y-%m-%d %H:%M} UTC after {self.days * 24} hourly ticks")

    def closed_months(self) -> list[str]:
        """Every month that ended within the run."""
        end = self.start + timedelta(days=self.days)
        months, first = [], self.start.replace(day=1, hour=0)
        while (following := (first + timedelta(days=32)).replace(day=1)) <= end:
            months.append(first.strftime("%Y-%m"))
            first = following
        return months

    async def settle(self, until: datetime) -> None:
        """Keep the simulated clock from racing ahead of the pipeline: a day ends when
        metering has closed its hours for every VM and the wallets have stopped moving (else
        billing would close months before the wallet confirmed their last debits)."""
        async def closed() -> bool:
            for vm_id in self.vm_company:
                state = await self.http.get(self.url("metering", f"/vms/{vm_id}"))
                if state.status_code != 200 or \
                        datetime.fromisoformat(state.json()["closed_until"]) < until:
                    return False
            return True

        await self._until(closed, f"metering to close hours up to {until:%Y-%m-%d}")
        before = None
        while (now := await self._balances()) != before:
            before = now
            await asyncio.sleep(0.15)

    async def _balances(self) -> list[int]:
        return [(await self.http.get(self.url("wallet", f"/wallets/{c.wallet_id}"))
                 ).json()["balance_minor"] for c in self.companies]

    async def report(self) -> bool:
        ok = True
        for month in self.closed_months():
            ok = await self.report_month(month) and ok
        await self._show_wallets()
        print("\nsimulation:", "OK" if ok else "FAILED")
        return ok

    async def report_month(self, closing: str) -> bool:
        ok = True
        print(f"\nmonth {closing}, closed per wallet:")
        print(f"  {'company':<20} {'opening':>12} {'charges':>12} {'credits':>10} "
              f"{'closing':>12} {'VM hours billed/metered':>24}  checks")
        for company in self.companies:
            statement = await self._until(
                lambda c=company: self._statement(c, closing), f"{company.name} {closing}",
                timeout=180)
            recon = (await self.http.get(self.url(
                "wallet", f"/wallets/{company.wallet_id}/reconciliation"))).json()
            vms = statement.get("vms", [])
            billed = sum(v.get("seconds_billed", 0) for v in vms) / 3600
            metered = sum(v.get("seconds_metered", 0) for v in vms) / 3600
            mismatches = statement.get("mismatches", [])
            checks = "ledger ok" if recon["consistent"] else "LEDGER MISMATCH"
            if mismatches:
                checks += f"; mismatches: {mismatches}"
            ok = ok and recon["consistent"] and not mismatches and billed <= metered
            print(f"  {company.name:<20} {_rand(statement, 'opening_balance'):>12} "
                  f"{_rand(statement, 'charges'):>12} {_rand(statement, 'credits'):>10} "
                  f"{_rand(statement, 'closing_balance'):>12} "
                  f"{billed:>11.1f}/{metered:<12.1f}  {checks}")
        runtime = (await self.http.get(self.url("metering", "/runtime"),
                                       params={"month": closing})).json()
        over = runtime.get("over_metered", runtime.get("over", []))
        print(f"\nmetering runtime check {closing}: {runtime.get('vms_checked', '?')} VMs, "
              f"metered never above actual: {not over}")
        ok = ok and not over
        await self._show_invoice(closing)
        return ok

    async def _statement(self, company: Company, month: str) -> dict[str, Any] | None:
        response = await self.http.get(
            self.url("billing", f"/wallets/{company.wallet_id}/statements/{month}"))
        return dict(response.json()) if response.status_code == 200 else None

    async def _show_invoice(self, month: str) -> None:
        for company in self.companies:
            if company.billing_mode != "INVOICE":
                continue
            response = await self.http.get(
                self.url("billing", f"/wallets/{company.wallet_id}/invoices/{month}"),
                params={"format": "csv"})
            if response.status_code == 200:
                lines = response.text.strip().splitlines()
                print(f"\ninvoice export for {company.name} ({len(lines) - 1} lines):")
                print("\n".join(f"  {line}" for line in lines[:4]))
                return

    async def _show_wallets(self) -> None:
        print("\nwallets now:")
        for company in self.companies:
            status = (await self.http.get(
                self.url("wallet", f"/wallets/{company.wallet_id}"))).json()
            flags = [f for f in ("low_balance", "depleted") if status[f]]
            burn = Money(status["burn_rate_per_hour_minor"]).format()
            print(f"  {company.name:<20} balance {status['balance']:>13} available "
                  f"{status['available']:>13} burn {burn}/h {' '.join(flags)}")

    async def _until(self, probe, what: str, timeout: float = 60):  # type: ignore[no-untyped-def]
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = await probe()
            if result:
                return result
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            await asyncio.sleep(0.2)


def _rand(statement: dict[str, Any], key: str) -> str:
    value = statement.get(key)
    if isinstance(value, dict):
        return Money(value["amount_minor"], value.get("currency", "ZAR")).format()
    if isinstance(value, int):
        return Money(value).format()
    minor = statement.get(f"{key}_minor")
    return Money(minor).format() if isinstance(minor, int) else "?"
