"""Schemathesis against every service's OpenAPI document, served over real HTTP by the
services on the real broker and database: with a valid key (no 5xx, every answer as
documented, invalid data refused, and a request stripped of its key refused), and without
one (every route but /health and the signed webhook answers 401). Whatever the fuzzing
sent, no balance or ledger row moved."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
import uvicorn

from deploy.processes import free_port
from services.billing.app import BillingService
from services.metering.app import MeteringService
from services.provisioning.app import ProvisioningService
from services.vcenter_simulator.app import VcenterSimulator
from services.vcenter_simulator.domain import SimulatorConfig
from services.wallet.app import WalletService
from shared.api_keys import issue_key
from shared.auth import Role
from shared.runtime import ServiceRuntime
from shared.webhooks import webhook_headers

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,response_headers_conformance,negative_data_rejection,"
          "ignored_auth")
EXAMPLES = 12
# One worker (`--workers 1`): with several, hypothesis parses strategy lambdas' source in
# threads at once, which CPython 3.11's ast module does not survive ("AST constructor
# recursion depth mismatch").


async def serve(service: ServiceRuntime) -> tuple[str, uvicorn.Server, asyncio.Task[None]]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(service.http, host="127.0.0.1", port=port,
                                           log_config=None, access_log=False, lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, task


@pytest.fixture(name="served")
async def served_fixture(env: Any) -> AsyncIterator[dict[str, str]]:
    # A generous rate: the fuzzer's requests should meet the routes, not the limiter.
    settings = env.settings.model_copy(update={"api_rate_per_s": 100_000.0,
                                               "api_rate_burst": 100_000})
    services: dict[str, ServiceRuntime] = {
        "wallet": WalletService(settings), "provisioning": ProvisioningService(settings),
        "metering": MeteringService(settings), "billing": BillingService(settings),
        "vcenter-simulator": VcenterSimulator(settings, SimulatorConfig())}
    running: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []
    urls: dict[str, str] = {}
    try:
        for name, service in services.items():
            url, server, task = await serve(service)
            running.append((server, task))
            urls[name] = url
        yield urls
    finally:
        for server, task in reversed(running):
            server.should_exit = True
            await task


async def ledger(database_url: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            """SELECT w.wallet_id, w.balance, w.held,
                      (SELECT coalesce(sum(amount), 0) FROM wallet.wallet_transactions t
                       WHERE t.wallet_id = w.wallet_id) AS ledger_sum,
                      (SELECT count(*) FROM wallet.wallet_transactions t
                       WHERE t.wallet_id = w.wallet_id) AS entries
               FROM wallet.organisation_wallets w ORDER BY w.wallet_id""")
        return [tuple(r) for r in rows]
    finally:
        await conn.close()


async def fuzz(url: str, *headers: str) -> tuple[int, str]:
    args = [str(SCHEMATHESIS), "run", f"{url}/openapi.json", "--checks", CHECKS,
            "--max-examples", str(EXAMPLES), "--phases", "examples,coverage,fuzzing",
            "--workers", "1", "--seed", "15", "--no-shrink", "--no-color",
            "--suppress-health-check", "all", "--generation-database", "none",
            "--request-timeout", "20"]
    for header in headers:
        args += ["-H", header]
    process = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


async def test_every_service_survives_fuzzing_with_and_without_keys(env, served, tmp_path,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with httpx.AsyncClient() as http:
        conn = await asyncpg.connect(env.database_url)
        try:
            operator = (await issue_key(conn, name="fuzzer", role=Role.OPERATOR)).token
            opened = (await http.post(f"{served['wallet']}/organisations",
                                      json={"name": "fuzzed"},
                                      headers={"Authorization": f"Bearer {operator}"})).json()
            organisation = (await issue_key(conn, name="fuzzed portal", role=Role.ORGANISATION,
                                            organisation_id=UUID(opened["organisation_id"])
                                            )).token
        finally:
            await conn.close()
        body = (f'{{"payment_id": "fund", "wallet_id": "{opened["wallet_id"]}", '
                '"amount_minor": 50000, "status": "succeeded"}').encode()
        funded = await http.post(f"{served['wallet']}/webhooks/payments", content=body,
                                 headers=webhook_headers(env.settings.payment_webhook_secret,
                                                         body))
        assert funded.json()["applied"], funded.text
    before = await ledger(env.database_url)

    failures = []
    for service, url in served.items():
        for key in (operator, organisation):
            code, report = await fuzz(url, f"Authorization: Bearer {key}")
            if code != 0:
                failures.append(f"--- {service} with a key ---\n{report[-6000:]}")
    assert not failures, "\n".join(failures)

    after = await ledger(env.database_url)
    assert [row for row in after if row[0] in {b[0] for b in before}] == before
    assert all(balance == ledger_sum for _, balance, _, ledger_sum, _ in after)


async def test_without_a_key_every_route_but_health_and_the_webhook_refuses(served):
    async with httpx.AsyncClient() as http:
        for service, url in served.items():
            document = (await http.get(f"{url}/openapi.json")).json()
            for path, operations in document["paths"].items():
                concrete = re.sub(r"\{month\}", "2026-01", path)
                concrete = re.sub(r"\{[^}]+\}", str(uuid4()), concrete)
                for method in operations:
                    response = await http.request(method.upper(), f"{url}{concrete}",
                                                  params={"month": "2026-01"})
                    expected = 200 if path == "/health" else 401
                    assert response.status_code == expected, (service, method, path,
                                                              response.text)
                    if expected == 401:
                        assert response.headers["content-type"] == "application/problem+json"
