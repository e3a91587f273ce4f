"""Every endpoint of every service against every role, on its own organisation's resources
and on another's: a table of who gets what. Another organisation's resource answers 404,
exactly as one that does not exist; a role not made for an endpoint answers 403; no key or
a bad key answers 401; every refusal is a problem document; and no refused request moves
money."""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest

from services.billing.app import BillingService
from services.metering.app import MeteringService
from shared.api_keys import issue_key
from shared.auth import Role
from shared.cli import SERVICES
from shared.settings import Settings
from tests.integration.test_provisioning_support import (  # noqa: F401
    Platform,
    eventually,
    platform_fixture,
)

CALLERS = ("none", "bad", "integration", "other", "reseller", "operator", "own")
READ = {"none": 401, "bad": 401, "integration": 403, "other": 404, "reseller": 200,
        "operator": 200, "own": 200}
ACT = {"none": 401, "bad": 401, "integration": 403, "other": 404, "reseller": 404,
       "operator": 403}
OPERATE = {"none": 401, "bad": 401, "integration": 403, "other": 403, "reseller": 403,
           "own": 403}
MACHINE = {"none": 401, "bad": 401, "integration": 200, "other": 403, "reseller": 403,
           "operator": 200, "own": 403}


@dataclass
class World:
    platform: Platform
    apps: dict[str, Any]
    keys: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    async def call(self, service: str, method: str, path: str, caller: str,
                   body: Any = None, headers: dict[str, str] | None = None
                   ) -> httpx.Response:
        sent = dict(headers or {})
        if caller == "bad":
            sent["Authorization"] = "Bearer cw_000000000000_" + "A" * 43
        elif caller != "none":
            sent["Authorization"] = f"Bearer {self.keys[caller]}"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.apps[service]),
                                     base_url=f"http://{service}") as http:
            return await http.request(method, path, json=body, headers=sent)


async def open_organisation(platform: Platform, *, kind: str = "customer",
                            reseller_id: str | None = None, balance: int = 0) -> dict[str, str]:
    r = await platform.wallet_http.post("/organisations", json={
        "name": f"org-{uuid4().hex[:6]}", "kind": kind, "reseller_id": reseller_id})
    assert r.status_code == 201, r.text
    opened = {k: str(v) for k, v in r.json().items()}
    if balance:
        await platform.top_up(opened["wallet_id"], balance)
    await eventually(lambda: platform.http.get(f"/organisations/{opened['organisation_id']}"),
                     lambda resp: resp.status_code == 200, what="provisioning to know the org")
    return opened


async def money(db_url: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            """SELECT w.wallet_id, w.balance, (SELECT count(*) FROM wallet.wallet_transactions t
                                               WHERE t.wallet_id = w.wallet_id) AS entries
               FROM wallet.organisation_wallets w ORDER BY w.wallet_id""")
        return [tuple(r) for r in rows]
    finally:
        await conn.close()


@pytest.fixture(name="world")
async def world_fixture(platform: Platform) -> AsyncIterator[World]:
    settings = platform.env.settings
    metering, billing = MeteringService(settings), BillingService(settings)
    await metering.start()
    await billing.start()
    try:
        world = World(platform, {"wallet": platform.wallet.http,
                                 "provisioning": platform.provisioning.http,
                                 "metering": metering.http, "billing": billing.http,
                                 "vcenter-simulator": platform.simulator.http})
        reseller = await open_organisation(platform, kind="reseller")
        own = await open_organisation(platform, reseller_id=reseller["organisation_id"],
                                      balance=100_000)
        other = await open_organisation(platform, balance=100_000)
        pool = platform.wallet.pool
        for name, role, org in (("own", Role.ORGANISATION, own), ("other", Role.ORGANISATION,
                                                                    other),
                                ("reseller", Role.RESELLER, reseller),
                                ("operator", Role.OPERATOR, None),
                                ("integration", Role.INTEGRATION, None)):
            issued = await issue_key(pool, name=name, role=role, organisation_id=UUID(
                org["organisation_id"]) if org else None)
            world.keys[name] = issued.token
        r = await world.call("provisioning", "POST", "/vm-requests", "own",
                             {"organisation_id": own["organisation_id"], "name": "vm-1",
                              "tier": "small"}, {"Idempotency-Key": "first"})
        assert r.status_code == 202, r.text
        done = await platform.wait_request(r.json()["request_id"], {"succeeded"})
        metered = await eventually(
            lambda: world.call("metering", "GET", f"/vms/{done['vm_id']}", "operator"),
            lambda resp: resp.status_code == 200, what="metering to know the VM")
        await eventually(
            lambda: world.call("billing", "GET", f"/wallets/{own['wallet_id']}/statements/"
                                                 "2026-01", "operator"),
            lambda resp: "not closed" in resp.json()["detail"], what="billing to know it")
        world.ids = {"wallet": own["wallet_id"], "org": own["organisation_id"],
                     "other_wallet": other["wallet_id"], "request": done["request_id"],
                     "vm": done["vm_id"], "month": metered.json()["created_at"][:7]}
        yield world
    finally:
        await billing.stop()
        await metering.stop()


def table(ids: dict[str, str]) -> list[tuple[str, str, str, Any, dict[str, Any]]]:
    """(service, method, path, body, expected status per caller); a caller left out of a
    row's expectations is not tried. Rows run in order, and in each row `own` (whose
    request may change something) goes last."""
    w, org, vm, req, month = ids["wallet"], ids["org"], ids["vm"], ids["request"], ids["month"]
    statement = f"/wallets/{w}/statement?from=2026-01-01T00:00:00Z&to=2099-01-01T00:00:00Z"
    unknown_to_billing = (404, "knows no wallet")
    rows: list[tuple[str, str, str, Any, dict[str, Any]]] = [
        ("wallet", "GET", f"/wallets/{w}", None, READ),
        ("wallet", "GET", f"/organisations/{org}/wallet", None, READ),
        ("wallet", "GET", statement, None, READ),
        ("wallet", "GET", f"/wallets/{w}/reconciliation", None, READ),
        ("wallet", "GET", f"/wallets/{ids['other_wallet']}", None,
         {"reseller": 404, "own": 404, "other": 200, "operator": 200}),
        ("wallet", "PUT", f"/wallets/{w}/auto-topup", {"enabled": False}, {**ACT, "own": 200}),
        ("wallet", "PUT", f"/wallets/{w}/status", {"status": "active"},
         {**OPERATE, "operator": 200}),
        ("wallet", "POST", f"/wallets/{w}/refunds", {"refund_id": str(uuid4()),
                                                     "charge_entry_id": 10**12,
                                                     "amount_minor": 1},
         {**OPERATE, "operator": (404, "no entry")}),
        ("wallet", "POST", "/organisations", {"name": "opened by the operator"},
         {**OPERATE, "operator": 201}),
        ("wallet", "GET", "/me", None, {**READ, "other": 200}),
        ("wallet", "GET", "/wallets?state=low_balance", None, {**OPERATE, "operator": 200}),
        ("provisioning", "GET", f"/vm-requests/{req}", None, READ),
        ("provisioning", "GET", f"/vms/{vm}", None, READ),
        ("provisioning", "GET", f"/organisations/{org}", None, READ),
        ("provisioning", "GET", f"/organisations/{org}/vms", None, READ),
        ("provisioning", "POST", "/estimates", {"tier": "small", "organisation_id": org}, READ),
        ("provisioning", "GET", "/rate-cards", None, {**READ, "other": 200}),
        ("provisioning", "POST", f"/vm-requests/{req}/cancel", None,
         {**ACT, "own": (409, "succeeded")}),
        ("provisioning", "POST", f"/vms/{vm}/resize", {"tier": "small"},
         {**ACT, "own": (422, "already has this size")}),
        ("provisioning", "POST", "/vm-requests", {"organisation_id": org, "name": "vm-2",
                                                  "tier": "small"}, {**ACT, "own": 202}),
        ("metering", "GET", f"/vms/{vm}", None, READ),
        ("metering", "GET", f"/vms/{vm}/usage?month={month}", None, READ),
        ("metering", "GET", f"/vms/{vm}/runtime?month={month}", None, READ),
        ("metering", "GET", f"/runtime?month={month}", None, {**OPERATE, "operator": 200}),
        ("billing", "GET", f"/wallets/{w}/statements/2026-01", None,
         {**READ, "other": unknown_to_billing, "own": (404, "not closed"),
          "reseller": (404, "not closed"), "operator": (404, "not closed")}),
        ("billing", "GET", f"/wallets/{w}/invoices/2026-01", None,
         {**READ, "other": unknown_to_billing, "own": (404, "no invoice"),
          "reseller": (404, "no invoice"), "operator": (404, "no invoice")}),
        ("billing", "GET", f"/wallets/{w}/auto-topups", None,
         {**READ, "other": unknown_to_billing}),
        ("vcenter-simulator", "GET", "/config", None, MACHINE),
        ("provisioning", "DELETE", f"/vms/{vm}", None, {**ACT, "own": 202}),
    ]
    for service in ("wallet", "provisioning", "metering", "billing", "vcenter-simulator"):
        rows.append((service, "GET", "/metrics", None, MACHINE))
        rows.append((service, "GET", "/health", None, {"none": 200}))
    return rows


async def test_every_endpoint_answers_each_role_on_its_own_and_others_resources(world: World):
    before = await money(world.platform.env.database_url)
    wrong: list[str] = []
    for service, method, path, body, expected in table(world.ids):
        for caller in CALLERS:
            if caller not in expected:
                continue
            status, words = (expected[caller] if isinstance(expected[caller], tuple)
                             else (expected[caller], ""))
            headers = {"Idempotency-Key": f"{caller}-{path}"} if method == "POST" else {}
            r = await world.call(service, method, path, caller, body, headers)
            if r.status_code >= 400:
                problem = r.json()
                if r.headers["content-type"] != "application/problem+json" or \
                        set(problem) < {"type", "title", "status", "detail"}:
                    wrong.append(f"{method} {service}{path} as {caller}: not a problem: "
                                 f"{r.text}")
                if words not in problem["detail"]:
                    wrong.append(f"{method} {service}{path} as {caller}: {problem['detail']}")
            if r.status_code != status:
                wrong.append(f"{method} {service}{path} as {caller}: {r.status_code}, "
                             f"expected {status}: {r.text[:200]}")
    assert not wrong, "\n".join(wrong)
    after = await money(world.platform.env.database_url)
    # Only the operator's new organisation appeared; no balance or ledger moved.
    assert [row for row in after if row in before] == before
    assert len(after) == len(before) + 1


# Answered by a signature, not a key (tests/integration/test_security_webhooks_limits.py).
NOT_IN_THE_TABLE = {("POST", "/webhooks/payments")}


def test_the_table_has_every_endpoint_of_every_service():
    """A new endpoint without a row in the table fails here, not in production (the
    endpoints are those of each service's OpenAPI document, which a unit test keeps whole)."""
    ids = {name: str(uuid4()) for name in ("wallet", "org", "vm", "request", "other_wallet")}
    rows = table({**ids, "month": "2026-01"})
    missing = []
    for service, (module, _) in SERVICES.items():
        app = importlib.import_module(module).create_service(Settings()).http
        for template, operations in app.openapi()["paths"].items():
            for method in (m.upper() for m in operations):
                if (method, template) in NOT_IN_THE_TABLE:
                    continue
                pattern = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/?]+", template) + "$")
                if not any(s == service and m == method and pattern.match(path.split("?")[0])
                           for s, m, path, _, _ in rows):
                    missing.append(f"{method} {service}{template}")
    assert not missing, f"endpoints with no row in the role table: {missing}"


async def test_another_organisations_resource_is_indistinguishable_from_none(world: World):
    """The 404 for a resource of another organisation is the 404 for an id never used."""
    for service, path in (("wallet", "/wallets/{}"), ("wallet", "/wallets/{}/reconciliation"),
                          ("provisioning", "/vms/{}"), ("provisioning", "/vm-requests/{}"),
                          ("metering", "/vms/{}"), ("billing", "/wallets/{}/invoices/2026-01")):
        real = world.ids["vm"] if "vms" in path else world.ids[
            "request"] if "requests" in path else world.ids["wallet"]
        never = str(uuid4())
        theirs = await world.call(service, "GET", path.format(real), "other")
        nobodys = await world.call(service, "GET", path.format(never), "other")
        assert theirs.status_code == nobodys.status_code == 404, (path, theirs.text)
        assert json.loads(theirs.text.replace(real, never)) == nobodys.json()
