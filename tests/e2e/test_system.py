"""The whole system as processes: every service started by the launcher, the main job (the
simulation at its test size: a dozen JSE-listed companies over two months) run through
them and proved to the cent by the independent oracle, everything stopped again with no
process left behind."""

import asyncio
import json
import uuid

import pytest

from deploy.demo import run_demo
from deploy.launcher import start_system
from deploy.processes import free_port
from deploy.simulation import DEFAULT_START, SIZES, simulation_settings
from shared.cli import RUNNABLE
from shared.db import drop_database, with_database
from shared.kafka_admin import create_topics, delete_topics
from shared.settings import Settings

pytestmark = pytest.mark.e2e


def test_the_simulation_agrees_with_its_oracle_and_the_system_stops_cleanly(infrastructure,
                                                                            tmp_path):
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka_bootstrap_servers=infrastructure.kafka_bootstrap_servers,
        database_url=with_database(infrastructure.server_url, f"e2e_{tag}"),
        topic_prefix=f"e2e{tag}.", group_prefix=f"e2e{tag}.",
        wallet_http_port=free_port(), provisioning_http_port=free_port(),
        metering_http_port=free_port(), billing_http_port=free_port(),
        vcenter_simulator_http_port=free_port(), portal_http_port=free_port(),
        log_json=True,
    )
    settings = simulation_settings(settings, DEFAULT_START, SIZES["test"].days)
    asyncio.run(create_topics(settings.kafka_bootstrap_servers, settings.topic_prefix))
    system = start_system(settings, tmp_path, use_existing=True)
    processes = list(system.processes.values())
    try:
        assert set(system.processes) == set(RUNNABLE)
        outcome = asyncio.run(run_demo(system, size="test", report_dir=tmp_path / "report"))
        assert [str(d) for d in outcome.differences] == []
        assert len(outcome.scenario.companies) == SIZES["test"].companies
        assert len(outcome.scenario.months()) == 2 and outcome.usage_events > 10_000
        report = json.loads((tmp_path / "report" / "report.json").read_text())
        assert report["oracle"] == "exact"
        # Anglo American and Datatec keep USD wallets: refused for want of a USD price at
        # first, then charged in USD by the USD card (the oracle agreed to the cent)
        usd = [c for c in report["companies"] if c["currency"] == "USD"]
        assert {c["ticker"] for c in usd} == {"AGL", "DTC"}
        assert all(sum(s["charges"] for s in c["statements"]) > 0 for c in usd)
        assert sum(r["revenue_minor_by_currency"]["USD"] for r in report["sectors"]) > 0
        assert sum(1 for v in outcome.scenario.actions[DEFAULT_START]
                   if v.ticker in ("AGL", "DTC")) == 2  # the requests before the USD card
        assert {p.name for p in (tmp_path / "report").glob("*.png")} == {
            "balances.png", "revenue_by_sector.png", "mining_fleet.png"}
    finally:
        system.stop()
        asyncio.run(drop_database(settings.database_url))
        asyncio.run(delete_topics(settings.kafka_bootstrap_servers, settings.topic_prefix))
    assert all(p.poll() is not None for p in processes)
