"""Bad requests to every HTTP endpoint: each is a 4xx problem document whose reason does not
echo the input, and nothing changes.

The routes come from the running FastAPI apps, so a new endpoint gets the generic cases by
itself (no key; unknown and malformed ids in its path; for a body, malformed JSON, a
non-object, an empty object, an oversized body, an unexpected field), and a new endpoint
with a body fails `test_every_endpoint_has_cases` until it has a valid body here to spoil
(amounts negative, zero, huge, as floats and strings; an unknown currency; unknown ids).

Every endpoint that takes an idempotency key or a caller's id (`IDEMPOTENT`) also gets the
key of a request made before with another body: a 409, not the first answer replayed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest

from services.billing.app import BillingService
from services.metering.app import MeteringService
from services.provisioning.app import ProvisioningService
from services.vcenter_simulator.app import VcenterSimulator
from services.vcenter_simulator.domain import SimulatorConfig
from services.wallet.app import WalletService
from shared.contracts.wallet import DebitWallet
from shared.money import MAX_AMOUNT_MINOR, MoneyModel
from shared.topics import BILLING_DEBITS
from shared.webhooks import webhook_headers
from tests.integration.test_provisioning_support import eventually
from tests.kafka_helpers import KafkaProbe, quiesce
from tests.keys import KeyRing, key_ring
from tests.state import differences, snapshot

ECHO = "ECHO-7f3a9c"  # in every bad input where text fits: an answer must not repeat it
BAD_NUMBER = 987_654_321_987
# Routes with nothing to spoil: no key needed, no parameters, no body.
OPEN_ROUTES = {("GET", "/health")}


@dataclass(frozen=True)
class Body:
    """A valid body of an endpoint and what in it can be spoiled."""
    valid: Callable[[dict[str, str]], dict[str, Any]]  # of the wallet's ids
    positive: tuple[str, ...] = ()  # amounts that must be above zero
    ids: tuple[str, ...] = ()  # ids of things that must exist
    currency: bool = False


BODIES: dict[tuple[str, str, str], Body] = {
    ("wallet", "POST", "/organisations"): Body(
        lambda w: {"name": "matrix", "billing_mode": "INVOICE", "credit_limit_minor": 1_000},
        ids=("reseller_id",), currency=True),
    ("wallet", "PUT", "/wallets/{wallet_id}/auto-topup"): Body(
        lambda w: {"enabled": True, "threshold_minor": 1_000, "amount_minor": 5_000,
                   "card_token": "tok_visa_ok"}),
    ("wallet", "POST", "/wallets/{wallet_id}/refunds"): Body(
        lambda w: {"refund_id": str(uuid4()), "charge_entry_id": 1, "amount_minor": 100},
        positive=("amount_minor", "charge_entry_id"), ids=("vm_id",)),
    ("wallet", "PUT", "/wallets/{wallet_id}/status"): Body(
        lambda w: {"status": "active", "reason": "matrix"}),
    ("wallet", "POST", "/webhooks/payments"): Body(
        lambda w: {"payment_id": uuid4().hex, "wallet_id": w["wallet_id"],
                   "amount_minor": 1_000, "currency": "ZAR", "status": "succeeded"},
        positive=("amount_minor",), ids=("wallet_id",), currency=True),
    ("provisioning", "POST", "/estimates"): Body(
        lambda w: {"organisation_id": w["organisation_id"], "tier": "small"},
        positive=("vcpu", "ram_gb", "disk_gb"), ids=("organisation_id",)),
    ("provisioning", "POST", "/vm-requests"): Body(
        lambda w: {"organisation_id": w["organisation_id"], "name": "m", "tier": "small"},
        positive=("vcpu", "ram_gb", "disk_gb"), ids=("organisation_id",)),
    ("provisioning", "POST", "/vms/{vm_id}/resize"): Body(
        lambda w: {"tier": "large"}, positive=("vcpu", "ram_gb", "disk_gb")),
}


# Endpoints that take an idempotency key (the header) or a caller's id for what they book:
# the same key with another body must be refused (409), not answered as the first was.
# `test_every_idempotent_endpoint_has_a_reuse_case` finds the header ones in the OpenAPI
# documents; the ids in bodies are named here.
IDEMPOTENT = {
    ("provisioning", "POST", "/vm-requests"): "Idempotency-Key",
    ("provisioning", "POST", "/vms/{vm_id}/resize"): "Idempotency-Key",
    ("wallet", "POST", "/wallets/{wallet_id}/refunds"): "refund_id",
    ("wallet", "POST", "/webhooks/payments"): "webhook-id and payment_id",
}


@dataclass(frozen=True)
class Request:
    service: str
    route: str  # METHOD /path template
    case: str
    method: str
    path: str
    body: bytes | None = None
    keyless: bool = False
    headers: tuple[tuple[str, str], ...] = ()  # instead of a new Idempotency-Key


class Running:
    def __init__(self, env: Any) -> None:
        # the per-key rate limit is the overload tests' subject, not this one's
        s = env.settings.model_copy(update={"api_rate_per_s": 1e6, "api_rate_burst": 10**6})
        self.env, self.settings = env, s
        self.services = {"wallet": WalletService(s), "provisioning": ProvisioningService(s),
                         "metering": MeteringService(s), "billing": BillingService(s),
                         "vcenter-simulator": VcenterSimulator(s, SimulatorConfig())}
        self.keys: KeyRing | None = None

    async def settled(self) -> None:
        async with KafkaProbe(self.settings.kafka_bootstrap_servers) as kafka:
            await quiesce(kafka, self.services.values(), self.env.database_url, timeout=120)

    def client(self, name: str, auth: bool = True) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.services[name].http),
                                 base_url=f"http://{name}", auth=self.keys if auth else None)


@pytest.fixture
async def running(env: Any) -> AsyncIterator[Running]:
    r = Running(env)
    started = []
    try:
        for service in r.services.values():
            await service.start()
            started.append(service)
        r.keys = await key_ring(r.services["wallet"].pool)
        yield r
    finally:
        for service in reversed(started):
            await service.stop()


def routes(service: Any) -> list[tuple[str, str]]:
    """(method, path) of every endpoint of a service's app, from the OpenAPI document it
    serves (its routers are included there, whatever the app's route list shows)."""
    paths = service.http.openapi()["paths"]
    return sorted((method.upper(), path) for path, ops in paths.items() for method in ops)


def has_body(service: Any, method: str, path: str) -> bool:
    return "requestBody" in service.http.openapi()["paths"][path][method.lower()]


def required_fields(service: Any, method: str, path: str) -> list[str]:
    """The body's required fields, by the OpenAPI document."""
    document = service.http.openapi()
    content = document["paths"][path][method.lower()]["requestBody"]["content"]
    schema = next(iter(content.values()))["schema"]
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return list(schema.get("required", []))


def _fill(path: str, ids: dict[str, str], bad: str | None = None) -> str:
    """The path with its parameters: the wallet's ids, or random ones, or `bad` text."""
    for name in ("organisation_id", "wallet_id", "request_id", "vm_id", "month"):
        value = bad if bad is not None else ids.get(name, "2026-11" if name == "month"
                                                    else str(uuid4()))
        path = path.replace("{" + name + "}", value)
    return path


def requests_for(name: str, service: Any, ids: dict[str, str]) -> list[Request]:
    cases: list[Request] = []
    max_bytes = service.settings.max_request_body_bytes
    for method, path in routes(service):
        if (method, path) in OPEN_ROUTES:
            continue
        route = f"{method} {path}"

        def add(case: str, at: str = path, body: bytes | None = None, keyless: bool = False,
                route: str = route, method: str = method) -> None:
            cases.append(Request(name, route, case, method, at, body, keyless))

        body_ok = BODIES.get((name, method, path))
        good = json.dumps(body_ok.valid(ids)).encode() if body_ok else b"{}"
        add("no API key", _fill(path, ids), good, keyless=True)
        if "{" in path:
            add("unknown ids", _fill(path, {}), good)
            add("malformed ids", _fill(path, ids, bad=f"not-an-id-{ECHO}"), good)
        if not has_body(service, method, path):
            continue
        at = _fill(path, ids)
        add("malformed JSON", at, b'{"name": "' + ECHO.encode() + b'", ')
        add("not an object", at, json.dumps([ECHO]).encode())
        add("oversized body", at, json.dumps({"padding": "x" * (max_bytes + 1)}).encode())
        if body_ok is None:
            continue
        valid = body_ok.valid(ids)
        if name != "wallet" or path != "/webhooks/payments":  # the gateway's may grow
            add("unexpected field", at, json.dumps({**valid, "unexpected": ECHO}).encode())
        required = required_fields(service, method, path)
        if required:
            add(f"missing {required[0]}", at, json.dumps(
                {k: v for k, v in valid.items() if k != required[0]}).encode())
        for field in body_ok.positive:
            for label, amount in (("negative", -BAD_NUMBER), ("zero", 0),
                                  ("huge", MAX_AMOUNT_MINOR + 1), ("float", 12.5),
                                  ("text", f"{ECHO}")):
                add(f"{field} {label}", at, json.dumps({**valid, field: amount}).encode())
        if body_ok.currency:
            add("unknown currency", at, json.dumps({**valid, "currency": "XXX"}).encode())
            add("currency as a number", at, json.dumps({**valid, "currency": 978}).encode())
        for field in body_ok.ids:
            add(f"unknown {field}", at, json.dumps({**valid, field: str(uuid4())}).encode())
            add(f"malformed {field}", at, json.dumps({**valid, field: ECHO}).encode())
    return cases


def test_every_endpoint_has_cases() -> None:
    """Every endpoint with a body has a valid body here to spoil; every other endpoint but
    /health gets the generic cases (so it cannot be forgotten)."""
    from shared.settings import Settings

    settings = Settings(database_url="postgresql://unused/x")
    services = {"wallet": WalletService(settings), "provisioning": ProvisioningService(settings),
                "metering": MeteringService(settings), "billing": BillingService(settings),
                "vcenter-simulator": VcenterSimulator(settings, SimulatorConfig())}
    with_body = {(name, method, path) for name, service in services.items()
                 for method, path in routes(service) if has_body(service, method, path)}
    assert with_body == set(BODIES), "an endpoint with a body needs its valid body in BODIES"
    ids = {"organisation_id": str(uuid4()), "wallet_id": str(uuid4())}
    for name, service in services.items():
        covered = {r.route for r in requests_for(name, service, ids)}
        expected = {f"{m} {p}" for m, p in routes(service) if (m, p) not in OPEN_ROUTES}
        assert covered == expected, name


def test_every_idempotent_endpoint_has_a_reuse_case() -> None:
    """An endpoint taking an Idempotency-Key (by its OpenAPI document) is in `IDEMPOTENT`,
    and every one there gets a reuse case (`reuse_requests`)."""
    from shared.settings import Settings

    settings = Settings(database_url="postgresql://unused/x")
    services = {"wallet": WalletService(settings), "provisioning": ProvisioningService(settings),
                "metering": MeteringService(settings), "billing": BillingService(settings),
                "vcenter-simulator": VcenterSimulator(settings, SimulatorConfig())}
    keyed = {(name, method.upper(), path)
             for name, service in services.items()
             for path, ops in service.http.openapi()["paths"].items()
             for method, op in ops.items()
             if any(p.get("name") == "Idempotency-Key" for p in op.get("parameters", []))}
    assert keyed and keyed <= set(IDEMPOTENT)
    made = Made(webhook_id="w", payment_id="p", vm_key="k", vm_id=str(uuid4()),
                resize_key="r", refund_id=str(uuid4()), entry_id=1)
    ids = {"organisation_id": str(uuid4()), "wallet_id": str(uuid4())}
    covered = {(q.service, *q.route.split(" ", 1))
               for q in reuse_requests(made, ids, settings.payment_webhook_secret)}
    assert covered == set(IDEMPOTENT)


@dataclass(frozen=True)
class Made:
    """What the set-up booked under a key, for the reuse cases."""
    webhook_id: str
    payment_id: str
    vm_key: str
    vm_id: str
    resize_key: str
    refund_id: str
    entry_id: int


def reuse_requests(made: Made, ids: dict[str, str], secret: str) -> list[Request]:
    """Each idempotent endpoint's key of a request made in the set-up, with another body."""
    org, wallet_id = ids["organisation_id"], ids["wallet_id"]
    other_payment = json.dumps({"payment_id": made.payment_id, "wallet_id": wallet_id,
                                "amount_minor": 77_777, "status": "succeeded"}).encode()
    return [
        Request("wallet", "POST /webhooks/payments", "webhook-id reused with another payment",
                "POST", "/webhooks/payments", other_payment, headers=tuple(webhook_headers(
                    secret, other_payment, message_id=made.webhook_id).items())),
        Request("wallet", "POST /webhooks/payments", "payment id reused with another amount",
                "POST", "/webhooks/payments", other_payment,
                headers=tuple(webhook_headers(secret, other_payment).items())),
        Request("provisioning", "POST /vm-requests", "Idempotency-Key reused for another VM",
                "POST", "/vm-requests", json.dumps({"organisation_id": org, "name": "other",
                                                    "tier": "small"}).encode(),
                headers=(("Idempotency-Key", made.vm_key),)),
        Request("provisioning", "POST /vms/{vm_id}/resize",
                "Idempotency-Key reused for another size", "POST",
                f"/vms/{made.vm_id}/resize", json.dumps({"tier": "large"}).encode(),
                headers=(("Idempotency-Key", made.resize_key),)),
        Request("wallet", "POST /wallets/{wallet_id}/refunds",
                "refund id reused with another amount", "POST",
                f"/wallets/{wallet_id}/refunds", json.dumps({
                    "refund_id": made.refund_id, "charge_entry_id": made.entry_id,
                    "amount_minor": 200}).encode()),
    ]


async def book_under_keys(r: Running, ids: dict[str, str], webhook_id: str,
                          payment_id: str) -> Made:
    """A VM (its request's key), its resize (another key) and a refund of a usage debit."""
    org, wallet_id = ids["organisation_id"], ids["wallet_id"]
    vm_key, resize_key, refund_id = uuid4().hex, uuid4().hex, str(uuid4())
    async with r.client("provisioning") as provisioning:
        await eventually(lambda: provisioning.get(f"/organisations/{org}"),
                         lambda resp: resp.status_code == 200, what="provisioning knows the org")
        asked = await provisioning.post("/vm-requests", json={
            "organisation_id": org, "name": "m", "tier": "small"},
            headers={"Idempotency-Key": vm_key})
        assert asked.status_code == 202, asked.text
        request = asked.json()

        async def status(request_id: str) -> httpx.Response:
            return await provisioning.get(f"/vm-requests/{request_id}")

        await eventually(lambda: status(request["request_id"]),
                         lambda a: a.json()["status"] == "succeeded", what="the VM")
        resized = await provisioning.post(f"/vms/{request['vm_id']}/resize",
                                          json={"tier": "medium"},
                                          headers={"Idempotency-Key": resize_key})
        assert resized.status_code == 202, resized.text
        await eventually(lambda: status(resized.json()["request_id"]),
                         lambda a: a.json()["status"] == "succeeded", what="the resize")
    async with KafkaProbe(r.settings.kafka_bootstrap_servers) as kafka:
        await kafka.publish(r.env.topic(BILLING_DEBITS.name), wallet_id, DebitWallet(
            debit_id=uuid4(), wallet_id=wallet_id, vm_id=request["vm_id"],
            amount=MoneyModel(amount_minor=10_000)))
    conn = await asyncpg.connect(r.env.database_url)
    try:
        entry_id = await eventually(lambda: conn.fetchval(
            """SELECT entry_id FROM wallet.wallet_transactions
               WHERE wallet_id = $1 AND kind = 'usage_debit'""", UUID(wallet_id)),
            lambda e: e is not None, what="the usage debit")
    finally:
        await conn.close()
    async with r.client("wallet") as wallet:
        refunded = await wallet.post(f"/wallets/{wallet_id}/refunds", json={
            "refund_id": refund_id, "charge_entry_id": entry_id, "amount_minor": 100})
        assert refunded.status_code == 201, refunded.text
    return Made(webhook_id, payment_id, vm_key, request["vm_id"], resize_key, refund_id,
                entry_id)


async def test_bad_requests_are_refused_with_problems_and_change_nothing(
        running: Running) -> None:
    r = running
    assert r.keys is not None
    async with r.client("wallet") as wallet:
        opened = await wallet.post("/organisations", json={"name": "matrix",
                                                           "billing_mode": "PAYG"})
        assert opened.status_code == 201, opened.text
        ids = {k: str(v) for k, v in opened.json().items()}
        await r.keys.opened(ids["organisation_id"])
        payment_id, webhook_id = uuid4().hex, f"msg_{uuid4().hex}"
        body = json.dumps({"payment_id": payment_id, "wallet_id": ids["wallet_id"],
                           "amount_minor": 500_000, "status": "succeeded"}).encode()
        paid = await wallet.post("/webhooks/payments", content=body, headers=webhook_headers(
            r.settings.payment_webhook_secret, body, message_id=webhook_id))
        assert paid.status_code == 200, paid.text
    made = await book_under_keys(r, ids, webhook_id, payment_id)
    await r.settled()
    async with r.client("wallet") as wallet:
        status_before = (await wallet.get(f"/wallets/{ids['wallet_id']}")).json()
    before = await snapshot(r.env.database_url)

    problems: list[str] = []
    sent = 0
    for name, service in r.services.items():
        async with r.client(name) as http, r.client(name, auth=False) as keyless:
            reuses = [q for q in reuse_requests(made, ids, r.settings.payment_webhook_secret)
                      if q.service == name]
            for q in requests_for(name, service, ids) + reuses:
                headers = {"Content-Type": "application/json",
                           "Idempotency-Key": uuid4().hex}
                if q.headers:
                    headers = {"Content-Type": "application/json", **dict(q.headers)}
                elif q.path == "/webhooks/payments" and not q.keyless:
                    headers |= webhook_headers(r.settings.payment_webhook_secret,
                                               q.body or b"")
                client = keyless if q.keyless else http
                response = await client.request(
                    q.method, q.path, content=q.body if q.method != "GET" else None,
                    headers=headers)
                sent += 1
                problem = judge(response)
                if q in reuses and not problem and response.status_code != 409:
                    problem = f"answered {response.status_code}, not 409: {response.text[:200]}"
                if problem:
                    problems.append(f"{name} {q.route} / {q.case}: {problem}")
    assert sent > 100
    assert problems == [], "\n".join(problems)
    await r.settled()  # whatever a request let through has reached every service
    changed = differences(before, await snapshot(r.env.database_url))
    assert changed == {}, changed
    async with r.client("wallet") as wallet:
        status = (await wallet.get(f"/wallets/{ids['wallet_id']}")).json()
        check = (await wallet.get(f"/wallets/{ids['wallet_id']}/reconciliation")).json()
    assert status["balance_minor"] == status_before["balance_minor"]
    assert status["held_minor"] == status_before["held_minor"]
    assert check["consistent"], check


def judge(response: httpx.Response) -> str | None:
    """What is wrong with the answer to a bad request, or None."""
    if not 400 <= response.status_code < 500:
        return f"answered {response.status_code}: {response.text[:200]}"
    if not response.headers.get("content-type", "").startswith("application/problem+json"):
        return f"{response.status_code} is not a problem document: {response.text[:200]}"
    document = response.json()
    if document.get("status") != response.status_code or not document.get("title"):
        return f"incomplete problem document {document}"
    if ECHO in response.text or str(BAD_NUMBER) in response.text:
        return f"the answer echoes the input: {response.text[:300]}"
    return None
