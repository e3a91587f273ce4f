"""The portal in a real browser: Debian's Chromium driven by Playwright, against the whole
system started as processes (every service and the portal, as `./run stack` does) on the
test broker and database. Screenshots of what each test saw go under a folder printed at
the start of the session."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import struct
import sys
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.launcher import RunningSystem, start_system
from deploy.processes import free_port
from shared.api_keys import issue_key_at
from shared.auth import Role
from shared.db import drop_database, with_database
from shared.kafka_admin import create_topics, delete_topics
from shared.settings import Settings
from shared.webhooks import webhook_headers

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium's own connections are refused by a
# closed network, and it stalls.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


@dataclass
class Organisation:
    organisation_id: str
    wallet_id: str
    key: str
    name: str


@dataclass
class Portal:
    system: RunningSystem
    operator_key: str
    screens: Path
    shots: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.system.url("portal")

    def api(self, service: str, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.system.url(service), timeout=20,
                            headers={"Authorization": f"Bearer {key or self.operator_key}"})

    def open_organisation(self, balance_minor: int, *, billing_mode: str = "PAYG",
                          credit_limit_minor: int = 0, kind: str = "customer",
                          reseller_id: str | None = None) -> Organisation:
        name = f"Acme {uuid.uuid4().hex[:8]}"
        with self.api("wallet") as wallet:
            opened = wallet.post("/organisations", json={
                "name": name, "kind": kind,
                "reseller_id": reseller_id, "billing_mode": billing_mode,
                "credit_limit_minor": credit_limit_minor})
            assert opened.status_code == 201, opened.text
            ids = {k: str(v) for k, v in opened.json().items()}
        key = run_async(issue_key_at(
            self.system.settings.database_url, name="portal test",
            role=Role.RESELLER if kind == "reseller" else Role.ORGANISATION,
            organisation_id=uuid.UUID(ids["organisation_id"])))
        if balance_minor:
            self.top_up(ids["wallet_id"], balance_minor)
        organisation = Organisation(ids["organisation_id"], ids["wallet_id"], key, name)
        with self.api("provisioning", key) as provisioning:
            eventually(lambda: provisioning.get(
                f"/organisations/{organisation.organisation_id}").status_code == 200,
                "provisioning to learn of the organisation")
        return organisation

    def top_up(self, wallet_id: str, amount_minor: int) -> None:
        body = json.dumps({"payment_id": f"pay-{uuid.uuid4().hex[:10]}", "wallet_id": wallet_id,
                           "amount_minor": amount_minor, "status": "succeeded",
                           "occurred_at": datetime.now(UTC).isoformat()}).encode()
        paid = httpx.post(f"{self.system.url('wallet')}/webhooks/payments", content=body,
                          headers=webhook_headers(
                              self.system.settings.payment_webhook_secret, body))
        assert paid.status_code == 200, paid.text
        with self.api("wallet") as wallet:
            eventually(lambda: wallet.get(f"/wallets/{wallet_id}").json()["balance_minor"]
                       >= amount_minor, "the top-up to be booked")

    def shot(self, page: Any, name: str) -> Path:
        path = self.screens / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.shots.append(path)
        return path


def write_report_fixture(folder: Path) -> Path:
    """A small report folder in the layout `cloudwallet demo` writes (docs/simulation.md):
    report.json and a plot."""
    folder.mkdir(parents=True)
    document = {
        "scenario": {"seed": 14, "start": "2026-07-01T00:00:00+00:00",
                     "end": "2026-09-01T00:00:00+00:00", "companies": 2,
                     "months": ["2026-07", "2026-08"]},
        "oracle": "exact", "differences": [], "usage_events": 12345,
        "sectors": [{"sector": "bank", "month": "2026-07", "vms": 3, "vm_hours": 2232.0,
                     "revenue_minor": 4_567_800, "refused_requests": 1,
                     "top_ups_minor": 5_000_000, "depleted_wallets": 0},
                    {"sector": "mining", "month": "2026-07", "vms": 5, "vm_hours": 1200.5,
                     "revenue_minor": 1_234_500, "refused_requests": 4,
                     "top_ups_minor": 1_000_000, "depleted_wallets": 1,
                     "revenue_minor_by_currency": {"ZAR": 1_234_500, "USD": 10_416},
                     "top_ups_minor_by_currency": {"ZAR": 1_000_000, "USD": 32_400}}],
        "companies": [{"ticker": "FSR", "name": "FirstRand", "industry": "Banks",
                       "sector": "bank", "profile": "bank", "billing_mode": "INVOICE",
                       "kind": "customer", "reseller": None, "balance_minor": -2_000_000,
                       "statements": [{"month": "2026-07"}]},
                      {"ticker": "AGL", "name": "Anglo American", "industry": "Basic Materials",
                       "sector": "mining", "profile": "mining", "billing_mode": "PAYG",
                       "kind": "customer", "reseller": None, "currency": "USD",
                       "balance_minor": 21_600, "statements": [{"month": "2026-07"}]}],
        "commodity_price": {}, "daily_balances": {}}
    (folder / "report.json").write_text(json.dumps(document))
    (folder / "balances.png").write_bytes(_png(160, 90))
    return folder


def _png(width: int, height: int) -> bytes:
    """A plain grey PNG, made by hand (the plots' content is the simulation's business)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    rows = b"".join(b"\x00" + b"\xc8" * width * 3 for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def run_async(coroutine: Any) -> Any:
    """Runs a coroutine to its end on a thread of its own: Playwright's sync API keeps an
    event loop running on the test's thread, where asyncio.run is refused."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


def eventually(check: Any, what: str, timeout: float = 30) -> None:
    """Polls `check` until it holds; the deadline only bounds a failure."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


@pytest.fixture(scope="module")
def portal(infrastructure: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: ./run installs Debian's chromium")
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka_bootstrap_servers=infrastructure.kafka_bootstrap_servers,
        database_url=with_database(infrastructure.server_url, f"portal_{tag}"),
        topic_prefix=f"portal{tag}.", group_prefix=f"portal{tag}.",
        wallet_http_port=free_port(), provisioning_http_port=free_port(),
        metering_http_port=free_port(), billing_http_port=free_port(),
        vcenter_simulator_http_port=free_port(), portal_http_port=free_port(), log_json=True)
    run_async(create_topics(settings.kafka_bootstrap_servers, settings.topic_prefix))
    data = tmp_path_factory.mktemp("portal")
    screens = Path(os.environ.get("PORTAL_SCREENS_DIR") or data / "screens")
    screens.mkdir(parents=True, exist_ok=True)
    print(f"\nportal screenshots: {screens}")
    report = write_report_fixture(data / "report")
    portal_env = {"PORTAL_SIMULATION_REPORT_DIR": str(report), "PORTAL_SIMULATION_RUNS": "true",
                  # A stand-in for `cloudwallet demo`: the page's part is starting a command
                  # and showing its output as it goes, not the demo itself.
                  "PORTAL_SIMULATION_COMMAND": f"{sys.executable} -c \"import time; "
                  "print('simulated day 1 of 2', flush=True); time.sleep(1); "
                  "print('simulated day 2 of 2; oracle exact', flush=True)\""}
    saved = {name: os.environ.get(name) for name in portal_env}
    os.environ.update(portal_env)
    try:
        system = start_system(settings, data, use_existing=True)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    try:
        operator_key = run_async(issue_key_at(settings.database_url, name="portal operator",
                                                role=Role.OPERATOR))
        yield Portal(system, operator_key, screens)
    finally:
        system.stop()
        run_async(drop_database(settings.database_url))
        run_async(delete_topics(settings.kafka_bootstrap_servers, settings.topic_prefix))


@pytest.fixture(scope="module")
def browser(portal: Portal) -> Iterator[Any]:
    # After the system: starting it runs asyncio.run, which Playwright's loop would refuse.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def sign_in(browser: Any, portal: Portal, key: str, viewport: dict[str, int] = DESKTOP
            ) -> Any:
    context = browser.new_context(viewport=viewport, accept_downloads=True)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{portal.url}/signin")
    page.fill("#api_key", key)
    page.click("button[type=submit]")
    return page


@pytest.fixture(autouse=True)
def short_waits() -> None:
    """Pages answer in well under a second; a missing element fails in seconds, not 30."""
    from playwright.sync_api import expect

    expect.set_options(timeout=10_000)
