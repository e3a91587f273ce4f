"""API keys for tests that are not about keys: a client that sends the operator's key, and
an organisation's key where only the organisation may act.

Acting endpoints (asking for, cancelling, resizing and deleting VMs, setting auto top-up)
go with the key of the organisation the body names, or else of the organisation opened
last; everything else goes with the operator's key. A request that sets its own
Authorization header keeps it. Tests about keys and roles (tests/integration/
test_security_*.py) choose every key themselves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator
from typing import Any
from uuid import UUID

import asyncpg
import httpx

from shared.api_keys import issue_key
from shared.auth import Role

_ACTING = [("POST", re.compile(r"^/vm-requests$")),
           ("POST", re.compile(r"^/vm-requests/[^/]+/cancel$")),
           ("POST", re.compile(r"^/vms/[^/]+/resize$")),
           ("DELETE", re.compile(r"^/vms/[^/]+$")),
           ("PUT", re.compile(r"^/wallets/[^/]+/auto-topup$"))]


class KeyRing(httpx.Auth):
    def __init__(self, pool: Any, operator: str) -> None:
        self.pool = pool
        self.operator = operator
        self.organisations: dict[str, str] = {}
        self.latest: str | None = None

    async def opened(self, organisation_id: UUID | str) -> str:
        """Issue the organisation's key; acting requests naming no organisation use it."""
        issued = await issue_key(self.pool, name="test organisation",
                                 role=Role.ORGANISATION, organisation_id=UUID(str(organisation_id)))
        self.organisations[str(organisation_id)] = issued.token
        self.latest = str(organisation_id)
        return issued.token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if "authorization" not in request.headers:
            request.headers["Authorization"] = f"Bearer {self._token(request)}"
        yield request

    def _token(self, request: httpx.Request) -> str:
        if not any(request.method == method and pattern.match(request.url.path)
                   for method, pattern in _ACTING):
            return self.operator
        named = None
        try:
            named = json.loads(request.content).get("organisation_id")
        except (ValueError, AttributeError):
            pass
        organisation = named if named in self.organisations else self.latest
        return self.organisations.get(organisation or "", self.operator)


async def key_ring(pool: asyncpg.Pool | asyncpg.Connection) -> KeyRing:
    issued = await issue_key(pool, name="test operator", role=Role.OPERATOR)
    return KeyRing(pool, issued.token)


async def operator_client(app: Any, pool: asyncpg.Pool, host: str) -> httpx.AsyncClient:
    """An in-process client of `app` that sends an operator's key."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}",
                             auth=await key_ring(pool))
