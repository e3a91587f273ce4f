"""The portal's only way to the other services: their HTTP APIs, with the signed-in user's
API key, so every service checks on its own what that key may see and do."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from shared.api_client import RetryAfterTransport


class ServiceError(Exception):
    """A service refused or failed; `detail` is its problem document's reason."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class ServiceUrls:
    wallet: str
    provisioning: str
    billing: str


class Services:
    """One pooled HTTP client shared by every signed-in user; each call carries its key."""

    def __init__(self, urls: ServiceUrls, transport: httpx.AsyncBaseTransport | None = None
                 ) -> None:
        self.urls = urls
        self.http = httpx.AsyncClient(transport=RetryAfterTransport(transport), timeout=20)

    async def aclose(self) -> None:
        await self.http.aclose()

    def as_user(self, token: str) -> UserClient:
        return UserClient(self, token)


class UserClient:
    def __init__(self, services: Services, token: str) -> None:
        self._services = services
        self._headers = {"Authorization": f"Bearer {token}"}

    async def _call(self, method: str, url: str, *, json: Any = None,
                    params: dict[str, str] | None = None,
                    headers: dict[str, str] | None = None) -> httpx.Response:
        try:
            response = await self._services.http.request(
                method, url, json=json, params=params,
                headers={**self._headers, **(headers or {})})
        except httpx.HTTPError:
            raise ServiceError(503, "a service did not answer; try again shortly") from None
        if response.status_code >= 400:
            try:
                detail = str(response.json().get("detail") or response.reason_phrase)
            except ValueError:
                detail = response.reason_phrase
            raise ServiceError(response.status_code, detail)
        return response

    async def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        return (await self._call(method, url, **kwargs)).json()

    # wallet
    async def me(self) -> dict[str, Any]:
        return await self._json("GET", f"{self._services.urls.wallet}/me")

    async def wallet(self, wallet_id: str) -> dict[str, Any]:
        return await self._json("GET", f"{self._services.urls.wallet}/wallets/{wallet_id}")

    async def organisation_wallet(self, organisation_id: str) -> dict[str, Any]:
        return await self._json(
            "GET", f"{self._services.urls.wallet}/organisations/{organisation_id}/wallet")

    async def statement(self, wallet_id: str, start: datetime, end: datetime,
                        csv: bool = False) -> Any:
        params = {"from": start.isoformat(), "to": end.isoformat()}
        if csv:
            params["format"] = "csv"
        response = await self._call(
            "GET", f"{self._services.urls.wallet}/wallets/{wallet_id}/statement",
            params=params)
        return response.text if csv else response.json()

    async def set_auto_topup(self, wallet_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._json(
            "PUT", f"{self._services.urls.wallet}/wallets/{wallet_id}/auto-topup", json=body)

    async def set_status(self, wallet_id: str, status: str, reason: str) -> dict[str, Any]:
        return await self._json(
            "PUT", f"{self._services.urls.wallet}/wallets/{wallet_id}/status",
            json={"status": status, "reason": reason})

    async def wallets(self, state: str) -> list[dict[str, Any]]:
        return await self._json("GET", f"{self._services.urls.wallet}/wallets",
                                params={"state": state})

    async def refund(self, wallet_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._json(
            "POST", f"{self._services.urls.wallet}/wallets/{wallet_id}/refunds", json=body)

    # provisioning
    async def vms(self, organisation_id: str) -> list[dict[str, Any]]:
        return await self._json(
            "GET", f"{self._services.urls.provisioning}/organisations/{organisation_id}/vms")

    async def estimate(self, organisation_id: str, size: dict[str, Any]) -> dict[str, Any]:
        return await self._json("POST", f"{self._services.urls.provisioning}/estimates",
                                json={"organisation_id": organisation_id, **size})

    async def request_vm(self, organisation_id: str, name: str, size: dict[str, Any],
                         idempotency_key: str) -> dict[str, Any]:
        return await self._json(
            "POST", f"{self._services.urls.provisioning}/vm-requests",
            json={"organisation_id": organisation_id, "name": name, **size},
            headers={"Idempotency-Key": idempotency_key})

    async def vm_request(self, request_id: str) -> dict[str, Any]:
        return await self._json(
            "GET", f"{self._services.urls.provisioning}/vm-requests/{request_id}")

    async def cancel_request(self, request_id: str) -> dict[str, Any]:
        return await self._json(
            "POST", f"{self._services.urls.provisioning}/vm-requests/{request_id}/cancel")

    async def resize(self, vm_id: str, size: dict[str, Any]) -> dict[str, Any]:
        return await self._json(
            "POST", f"{self._services.urls.provisioning}/vms/{vm_id}/resize", json=size,
            headers={"Idempotency-Key": str(uuid.uuid4())})

    async def vm(self, vm_id: str) -> dict[str, Any]:
        return await self._json("GET", f"{self._services.urls.provisioning}/vms/{vm_id}")

    async def delete_vm(self, vm_id: str) -> dict[str, Any]:
        return await self._json("DELETE", f"{self._services.urls.provisioning}/vms/{vm_id}")

    async def rate_cards(self) -> list[dict[str, Any]]:
        return await self._json("GET", f"{self._services.urls.provisioning}/rate-cards")

    # billing
    async def monthly_statement(self, wallet_id: str, month: str) -> dict[str, Any] | None:
        return await self._optional(
            f"{self._services.urls.billing}/wallets/{wallet_id}/statements/{month}")

    async def invoice(self, wallet_id: str, month: str, csv: bool = False) -> Any:
        url = f"{self._services.urls.billing}/wallets/{wallet_id}/invoices/{month}"
        response = await self._call("GET", url, params={"format": "csv"} if csv else None)
        return response.text if csv else response.json()

    async def auto_topups(self, wallet_id: str, limit: int) -> list[dict[str, Any]]:
        """Auto top-up attempts, newest first; none while billing has not heard of the wallet."""
        found = await self._optional(
            f"{self._services.urls.billing}/wallets/{wallet_id}/auto-topups?limit={limit}")
        return found or []

    async def _optional(self, url: str) -> Any:
        try:
            return await self._json("GET", url)
        except ServiceError as error:
            if error.status == 404:
                return None
            raise
