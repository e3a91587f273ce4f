"""The platform the provisioning tests run against: the wallet, provisioning and the vCenter
simulator in-process, on the real broker and database of the `env` fixture.

Test modules import `platform_fixture` (the `platform` fixture) from here; this module holds
no tests itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from services.provisioning.app import ProvisioningService
from services.vcenter_simulator.app import VcenterSimulator
from services.vcenter_simulator.domain import SimulatorConfig
from services.wallet.app import WalletService
from shared.clock import publish_tick
from shared.webhooks import webhook_headers
from tests.kafka_helpers import KafkaProbe, quiesce
from tests.keys import KeyRing, key_ring

T = TypeVar("T")

OPEN = {"awaiting_funds", "awaiting_vcenter"}
TERMINAL = {"succeeded", "rejected", "failed", "cancelled"}
MEDIUM_MONTHLY = 30_000  # R300


async def eventually(probe: Callable[[], Awaitable[T]], until: Callable[[T], bool],
                     timeout: float = 20.0, what: str = "condition") -> T:
    """Poll until `until(value)` holds; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    value = await probe()
    while not until(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value: {value!r}")
        await asyncio.sleep(0.05)
        value = await probe()
    return value


@dataclass
class Platform:
    env: Any
    wallet: WalletService
    provisioning: ProvisioningService
    simulator: VcenterSimulator
    wallet_http: httpx.AsyncClient
    http: httpx.AsyncClient
    kafka: KafkaProbe
    ticks: AIOKafkaProducer
    keys: KeyRing

    def topic(self, name: str) -> str:
        return str(self.env.topic(name))

    async def open_organisation(self, *, balance_minor: int = 0, billing_mode: str = "PAYG",
                                credit_limit_minor: int = 0) -> dict[str, str]:
        """Open it on the wallet and wait until provisioning has heard (WalletOpened)."""
        r = await self.wallet_http.post("/organisations", json={
            "name": f"org-{uuid4().hex[:6]}", "billing_mode": billing_mode,
            "credit_limit_minor": credit_limit_minor})
        assert r.status_code == 201, r.text
        opened = {k: str(v) for k, v in r.json().items()}
        await self.keys.opened(opened["organisation_id"])
        if balance_minor:
            await self.top_up(opened["wallet_id"], balance_minor)
        await eventually(lambda: self.http.get(f"/organisations/{opened['organisation_id']}"),
                         lambda resp: resp.status_code == 200, what="provisioning to know the org")
        return opened

    async def top_up(self, wallet_id: str, amount_minor: int) -> None:
        body = json.dumps({"payment_id": f"pay-{uuid4().hex}", "wallet_id": wallet_id,
                           "amount_minor": amount_minor, "status": "succeeded"}).encode()
        signed = webhook_headers(self.env.settings.payment_webhook_secret, body)
        r = await self.wallet_http.post("/webhooks/payments", content=body, headers=signed)
        assert r.status_code == 200 and r.json()["applied"], r.text

    async def wallet_status(self, wallet_id: str) -> dict[str, Any]:
        r = await self.wallet_http.get(f"/wallets/{wallet_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def wait_wallet(self, wallet_id: str, until: Callable[[dict[str, Any]], bool],
                          what: str = "wallet") -> dict[str, Any]:
        return await eventually(lambda: self.wallet_status(wallet_id), until, what=what)

    async def request_vm(self, organisation_id: str, name: str = "web-1",
                         key: str | None = None, **size: Any) -> httpx.Response:
        body = {"organisation_id": organisation_id, "name": name, **(size or {"tier": "medium"})}
        return await self.http.post("/vm-requests", json=body,
                                    headers={"Idempotency-Key": key or uuid4().hex})

    async def request(self, request_id: str) -> dict[str, Any]:
        r = await self.http.get(f"/vm-requests/{request_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def wait_request(self, request_id: str, statuses: set[str],
                           timeout: float = 20.0) -> dict[str, Any]:
        """Wait for the request to reach one of `statuses` (it may not exist yet)."""
        response = await eventually(
            lambda: self.http.get(f"/vm-requests/{request_id}"),
            lambda r: r.status_code == 200 and r.json()["status"] in statuses, timeout,
            what=f"request {request_id} to be one of {statuses}")
        return dict(response.json())

    async def vm(self, vm_id: str) -> httpx.Response:
        return await self.http.get(f"/vms/{vm_id}")

    async def wait_vm(self, vm_id: str, until: Callable[[dict[str, Any]], bool],
                      what: str = "VM") -> dict[str, Any]:
        response = await eventually(lambda: self.vm(vm_id),
                                    lambda r: r.status_code == 200 and until(r.json()), what=what)
        return dict(response.json())

    async def tick(self, at: datetime) -> None:
        await publish_tick(self.ticks, self.env.settings, at)

    async def messages(self, topic: str, count: int,
                       where: Callable[[dict[str, Any]], bool] = lambda m: True,
                       timeout: float = 20.0) -> list[dict[str, Any]]:
        return await self.kafka.read_count(self.topic(topic), count, timeout, where)

    async def settled(self) -> None:
        """Barrier: the wallet, provisioning and the simulator have handled everything sent
        so far and everything that caused (see `quiesce`)."""
        await quiesce(self.kafka, self.running(), self.env.database_url)

    def running(self) -> list[Any]:
        return [s for s in (self.wallet, self.provisioning, self.simulator) if s._started]

    async def all_messages(self, topic: str,
                           where: Callable[[dict[str, Any]], bool] = lambda m: True
                           ) -> list[dict[str, Any]]:
        """Every message on the topic once the platform has settled: an exact count."""
        await self.settled()
        return [m for m in await self.kafka.read_to_end(self.topic(topic)) if where(m)]

    async def status_in_db(self, request_id: str) -> str:
        """The request's status as stored, read without the (possibly stopped) service."""
        conn = await asyncpg.connect(self.env.database_url)
        try:
            status: str = await conn.fetchval(
                "SELECT status FROM provisioning.requests WHERE request_id = $1",
                UUID(request_id))
            return status
        finally:
            await conn.close()

    async def restart_provisioning(self) -> None:
        """A new instance on the same database and consumer groups (a crash and restart)."""
        await self.http.aclose()
        self.provisioning = ProvisioningService(self.env.settings)
        await self.provisioning.start()
        self.http = _client(self.provisioning.http, "provisioning", self.keys)


def _client(app: Any, host: str, keys: KeyRing) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}",
                             auth=keys)


@pytest.fixture(name="platform")
async def platform_fixture(env: Any) -> AsyncIterator[Platform]:
    wallet = WalletService(env.settings)
    provisioning = ProvisioningService(env.settings)
    simulator = VcenterSimulator(env.settings, SimulatorConfig())
    ticks = AIOKafkaProducer(bootstrap_servers=env.settings.kafka_bootstrap_servers)
    started: list[Any] = []
    try:
        for service in (wallet, provisioning, simulator, ticks):
            await service.start()
            started.append(service)
        keys = await key_ring(wallet.pool)
        async with KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
            p = Platform(env, wallet, provisioning, simulator,
                         _client(wallet.http, "wallet", keys),
                         _client(provisioning.http, "provisioning", keys), kafka, ticks, keys)
            try:
                yield p
            finally:
                await p.wallet_http.aclose()
                await p.http.aclose()
                if p.provisioning is not provisioning and p.provisioning._started:
                    await p.provisioning.stop()
    finally:
        for service in reversed(started):
            if getattr(service, "_started", True):
                await service.stop()
