"""The simulation's connections to the running system: the portal's HTTP client, the wait
for a quiet system, the wallet events feed, and stopping on Ctrl-C."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from shared.api_client import RetryAfterTransport
from shared.api_keys import issue_key_at
from shared.auth import Role
from shared.settings import Settings
from shared.topics import ALL_TOPICS, WALLET_EVENTS
from shared.webhooks import webhook_headers


class Stopped(Exception):
    """The run was asked to stop (Ctrl-C)."""


STOP = asyncio.Event()  # set by Ctrl-C: every wait of the driver gives up at once


def check_stop() -> None:
    if STOP.is_set():
        raise Stopped("stopped")


async def stop_within(*stops: Awaitable[None], seconds: float = 3) -> None:
    for stopping in stops:
        try:
            await asyncio.wait_for(stopping, seconds)
        except (TimeoutError, KafkaError, OSError):
            pass


class Portal:
    """Every HTTP call of the simulation goes through here: one client, sending the
    operator's API key, or an organisation's own key for what only it may do (its VMs, its
    auto top-up) and its frequent reads (each key has its own rate limit)."""

    def __init__(self, urls: dict[str, str], operator_key: str, webhook_secret: str,
                 database_url: str) -> None:
        self.urls = urls
        self.webhook_secret = webhook_secret
        self.database_url = database_url
        self.keys: dict[UUID, str] = {}
        # Seconds a call keeps trying while its service is down or restarting (connection
        # errors, 5xx): 0 tries three times; a fault-injection run sets it (deploy/chaos.py).
        self.patience_s = 0.0
        # HTTP requests sent to each service (every try): a benchmark counts them as work
        self.requests_sent: Counter[str] = Counter()
        # Idle connections are dropped before uvicorn's keep-alive (5 s) closes them; a 429
        # waits as long as its Retry-After says.
        self.http = httpx.AsyncClient(
            timeout=30, headers={"Authorization": f"Bearer {operator_key}"},
            transport=RetryAfterTransport(httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=32, keepalive_expiry=2))))

    @classmethod
    async def signed_in(cls, urls: dict[str, str], settings: Settings) -> Portal:
        operator = await issue_key_at(settings.database_url, name="simulation operator",
                                      role=Role.OPERATOR)
        return cls(urls, operator, settings.payment_webhook_secret, settings.database_url)

    async def opened(self, organisation_id: UUID, kind: str) -> None:
        """The organisation's own key, issued as its portal user would get one."""
        self.keys[organisation_id] = await issue_key_at(
            self.database_url, name="simulation organisation", organisation_id=organisation_id,
            role=Role.RESELLER if kind == "reseller" else Role.ORGANISATION)

    def acting_for(self, organisation_id: UUID) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[organisation_id]}"}

    async def close(self) -> None:
        await self.http.aclose()

    async def call(self, method: str, service: str, path: str, **kwargs: Any) -> httpx.Response:
        """Tried again on a connection error (and, with `patience_s`, on a 5xx answer):
        every call of the simulation after the opening is idempotent (payment, refund and
        request ids, idempotency keys)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.patience_s
        pause = 0.2
        for attempt in range(1_000_000):
            check_stop()
            patient = loop.time() < deadline
            self.requests_sent[service] += 1
            try:
                response = await self.http.request(method, f"{self.urls[service]}{path}",
                                                   **kwargs)
            except httpx.TransportError:
                if attempt >= 2 and not patient:
                    raise
            else:
                if response.status_code < 500 or not patient:
                    return response
            await asyncio.sleep(pause)
            if patient:
                pause = min(pause * 2, 2.0)
        raise AssertionError("unreachable")

    async def pay(self, wallet_id: UUID, payment_id: str, amount: int, at: datetime,
                  currency: str = "ZAR") -> None:
        """A payment through the gateway's signed webhook, in the wallet's currency."""
        body = json.dumps({"payment_id": payment_id, "wallet_id": str(wallet_id),
                           "amount_minor": amount, "currency": currency, "status": "succeeded",
                           "occurred_at": at.isoformat()}).encode()
        response = await self.call("POST", "wallet", "/webhooks/payments", content=body,
                                   headers=webhook_headers(self.webhook_secret, body))
        response.raise_for_status()

    async def refund(self, wallet_id: UUID, vm_id: UUID, hour: datetime, percent: int,
                     refund_id: UUID) -> tuple[str, int]:
        """Refund `percent` of what the wallet charged for one VM hour. The one place that
        knows how the ledger names a usage charge: one entry per wallet and hour, whose VM
        parts the statement lists with `detail=vm`; the refund names the entry and the VM.
        Returns (applied | refused | skipped, the charge)."""
        entries = await self.call("GET", "wallet", f"/wallets/{wallet_id}/statement", params={
            "from": hour.isoformat(), "to": (hour + timedelta(hours=1)).isoformat(),
            "detail": "vm"})
        entries.raise_for_status()
        parts = [(e["entry_id"], part["amount_minor"]) for e in entries.json()["entries"]
                 if e["kind"] == "usage_debit" for part in e.get("vms", ())
                 if part["vm_id"] == str(vm_id)]
        charge = -sum(amount for _, amount in parts)
        amount = charge * percent // 100
        if not parts or amount <= 0:
            return "skipped", charge
        response = await self.call("POST", "wallet", f"/wallets/{wallet_id}/refunds", json={
            "refund_id": str(refund_id), "charge_entry_id": parts[0][0], "vm_id": str(vm_id),
            "amount_minor": amount, "reason": "incident credit"})
        if response.status_code == 422:
            return "refused", charge
        response.raise_for_status()
        return "applied", charge


class Quiet:
    """Waits until every consumer group of this system has committed up to the end of the
    topic it reads, seen twice in a row a little apart (outbox rows a handler committed go
    out just after its offsets)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                         enable_auto_commit=False)
        self.partitions = [TopicPartition(settings.topic(t.name), p)
                           for t in ALL_TOPICS for p in range(t.partitions)]
        self.groups: list[str] = []

    async def start(self) -> None:
        await self.admin.start()
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def _groups(self) -> list[str]:
        prefix = self.settings.group_prefix
        known = {t.name for t in ALL_TOPICS}
        return [g[0] for g in await self.admin.list_consumer_groups()
                if g[0].startswith(prefix) and g[0][len(prefix):].partition(".")[2] in known]

    async def _lagging(self, group: str, ends: dict[TopicPartition, int]) -> bool:
        topic = self.settings.topic(group[len(self.settings.group_prefix):].partition(".")[2])
        committed = await self.admin.list_consumer_group_offsets(group)
        for tp, end in ends.items():
            if tp.topic == topic and end > 0:
                offset = committed.get(tp)
                if offset is None or offset.offset < end:
                    return True
        return False

    async def _snapshot(self) -> tuple[dict[TopicPartition, int], bool]:
        try:
            return await self._read_snapshot()
        except KafkaError:  # the broker restarting: not quiet yet, ask again
            await asyncio.sleep(0.5)
            return {}, True

    async def _read_snapshot(self) -> tuple[dict[TopicPartition, int], bool]:
        ends = await self.consumer.end_offsets(self.partitions)
        if not self.groups:  # every service's groups exist once it has started
            self.groups = await self._groups()
        lags = await asyncio.gather(*(self._lagging(g, ends) for g in self.groups))
        return ends, any(lags)

    async def wait(self, timeout: float = 300) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        previous: dict[TopicPartition, int] | None = None
        while True:
            check_stop()
            ends, lagging = await self._snapshot()
            if not lagging and ends == previous:
                return
            previous = None if lagging else ends
            if loop.time() > deadline:
                raise TimeoutError("the system did not settle")
            await asyncio.sleep(0.05 if lagging else 0.12)


class WalletFeed:
    """Follows `wallet.events` from the start, as a portal would: each wallet's latest
    balance and whether its funds are depleted."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic(WALLET_EVENTS.name)
        # The broker answers a fetch at once (it would wait up to 500 ms for more bytes).
        self.consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                         enable_auto_commit=False, fetch_max_wait_ms=5)
        self.partitions = [TopicPartition(self.topic, p) for p in range(WALLET_EVENTS.partitions)]
        self.balances: dict[str, int] = {}
        self.depleted: set[str] = set()

    async def start(self) -> None:
        await self.consumer.start()
        self.consumer.assign(self.partitions)
        await self.consumer.seek_to_beginning(*self.partitions)

    async def stop(self) -> None:
        await self.consumer.stop()

    async def drain(self) -> None:
        """Everything on the topic now (call it when the system is quiet); asked again while
        the broker restarts."""
        for attempt in range(120):
            try:
                return await self._drain()
            except KafkaError:
                if attempt == 119:
                    raise
                await asyncio.sleep(0.5)

    async def _drain(self) -> None:
        ends = await self.consumer.end_offsets(self.partitions)
        while [tp for tp, end in ends.items() if await self.consumer.position(tp) < end]:
            batches = await self.consumer.getmany(timeout_ms=200, max_records=10_000)
            for records in batches.values():
                for record in records:
                    self._apply(json.loads(record.value))

    def _apply(self, event: dict[str, Any]) -> None:
        wallet = str(event.get("wallet_id"))
        if "balance_after" in event:
            self.balances[wallet] = event["balance_after"]["amount_minor"]
        if event["type"] == "wallet.depleted":
            self.depleted.add(wallet)
        elif event["type"] == "wallet.funds_restored":
            self.depleted.discard(wallet)
