"""The whole system as processes: every service started by the launcher, the main job run
through them, everything stopped again with no process left behind."""

import asyncio
import uuid

import pytest

from deploy.demo import run_demo
from deploy.launcher import start_system
from deploy.processes import free_port
from shared.cli import RUNNABLE
from shared.db import drop_database, with_database
from shared.kafka_admin import create_topics, delete_topics
from shared.settings import Settings

pytestmark = pytest.mark.e2e


def test_system_runs_its_main_job_and_stops_cleanly(infrastructure, tmp_path):
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
    asyncio.run(create_topics(settings.kafka_bootstrap_servers, settings.topic_prefix))
    system = start_system(settings, tmp_path, use_existing=True)
    processes = list(system.processes.values())
    try:
        assert set(system.processes) == set(RUNNABLE)
        assert asyncio.run(run_demo(system, days=3))
    finally:
        system.stop()
        asyncio.run(drop_database(settings.database_url))
        asyncio.run(delete_topics(settings.kafka_bootstrap_servers, settings.topic_prefix))
    assert all(p.poll() is not None for p in processes)
