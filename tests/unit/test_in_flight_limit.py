"""Admission control: past `max_in_flight` requests at once a process answers 503 with
Retry-After at once, never /health, and takes requests again as the others finish."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from shared.http import InFlightLimit, install_problem_handlers


def app_with_a_gate(limit: int) -> tuple[FastAPI, asyncio.Event]:
    gate = asyncio.Event()
    app = FastAPI()
    install_problem_handlers(app)
    app.add_middleware(InFlightLimit, max_in_flight=limit)

    @app.get("/slow")
    async def slow() -> dict[str, bool]:
        await gate.wait()
        return {"ok": True}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app, gate


async def test_past_the_limit_requests_are_refused_with_retry_after_then_taken_again() -> None:
    app, gate = app_with_a_gate(limit=3)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        held = [asyncio.create_task(client.get("/slow")) for _ in range(3)]
        while app.middleware_stack is None or _in_flight(app) < 3:
            await asyncio.sleep(0.01)
        refused = await client.get("/slow")
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["detail"] == "the service is at capacity; try again shortly"
        assert (await client.get("/health")).status_code == 200  # never refused
        gate.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200, 200]
        assert (await client.get("/slow")).status_code == 200
        assert _in_flight(app) == 0


def _in_flight(app: FastAPI) -> int:
    layer = app.middleware_stack
    while layer is not None and not isinstance(layer, InFlightLimit):
        layer = getattr(layer, "app", None)
    assert isinstance(layer, InFlightLimit)
    return layer.in_flight
