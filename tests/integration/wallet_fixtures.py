"""Running the wallet service against the real broker and database in a test."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import httpx

from services.wallet.app import WalletService
from shared.settings import Settings
from shared.topics import Topic
from shared.webhooks import webhook_headers
from tests.keys import KeyRing, key_ring


@dataclass
class WalletClient:
    http: httpx.AsyncClient
    settings: Settings
    keys: KeyRing

    async def open(self, *, billing_mode: str = "PAYG", credit_limit: int = 0,
                   currency: str = "ZAR", threshold: int | None = None,
                   balance: int = 0) -> tuple[UUID, UUID]:
        body: dict[str, Any] = {"name": f"org-{uuid4().hex[:6]}", "billing_mode": billing_mode,
                                "credit_limit_minor": credit_limit, "currency": currency}
        if threshold is not None:
            body["low_balance_threshold_minor"] = threshold
        response = await self.http.post("/organisations", json=body)
        assert response.status_code == 201, response.text
        opened = response.json()
        await self.keys.opened(opened["organisation_id"])
        wallet_id = UUID(opened["wallet_id"])
        if balance:
            await self.top_up(wallet_id, balance, currency=currency)
        return UUID(opened["organisation_id"]), wallet_id

    async def top_up(self, wallet_id: UUID, amount: int, payment_id: str | None = None,
                     currency: str = "ZAR", secret: str | None = None) -> httpx.Response:
        body = json.dumps({"payment_id": payment_id or uuid4().hex, "wallet_id": str(wallet_id),
                           "amount_minor": amount, "currency": currency,
                           "status": "succeeded"}).encode()
        headers = webhook_headers(secret or self.settings.payment_webhook_secret, body)
        return await self.http.post("/webhooks/payments", content=body, headers=headers)

    async def refund(self, wallet_id: UUID, charge_entry_id: int, amount: int,
                     refund_id: UUID | None = None) -> httpx.Response:
        return await self.http.post(f"/wallets/{wallet_id}/refunds", json={
            "refund_id": str(refund_id or uuid4()), "charge_entry_id": charge_entry_id,
            "amount_minor": amount})

    async def set_status(self, wallet_id: UUID, status: str) -> httpx.Response:
        return await self.http.put(f"/wallets/{wallet_id}/status", json={"status": status})

    async def set_auto_topup(self, wallet_id: UUID, *, enabled: bool, threshold: int = 0,
                             amount: int = 0, card_token: str = "tok_visa_ok"
                             ) -> httpx.Response:
        return await self.http.put(f"/wallets/{wallet_id}/auto-topup", json={
            "enabled": enabled, "threshold_minor": threshold, "amount_minor": amount,
            "card_token": card_token})

    async def status(self, wallet_id: UUID) -> dict[str, Any]:
        response = await self.http.get(f"/wallets/{wallet_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def assert_consistent(self, wallet_id: UUID) -> dict[str, Any]:
        check = (await self.http.get(f"/wallets/{wallet_id}/reconciliation")).json()
        assert check["consistent"], check
        return dict(check)


async def wait_assigned(services: list[WalletService], topics: list[Topic],
                        timeout: float = 60.0) -> None:
    """Until every instance has partitions of each of `topics` (the group has rebalanced
    to all of them), so none sits out what the test sends next."""

    def assigned(service: WalletService) -> bool:
        wanted = [sub for sub in service.broker.subscribers
                  if any(name.endswith(f".{topic.name}") for name in sub.topic_names
                         for topic in topics)]
        assert len(wanted) == len(topics)
        return all(sub.consumer is not None and sub.consumer.assignment() for sub in wanted)

    async with asyncio.timeout(timeout):
        while not all(assigned(s) for s in services):
            await asyncio.sleep(0.1)


@asynccontextmanager
async def running_wallet(settings: Settings) -> AsyncIterator[tuple[WalletService, WalletClient]]:
    service = WalletService(settings)
    await service.start()
    try:
        keys = await key_ring(service.pool)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http),
                                     base_url="http://wallet", auth=keys) as http:
            yield service, WalletClient(http, settings, keys)
    finally:
        await service.stop()
