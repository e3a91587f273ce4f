"""Real infrastructure for tests.

Session scope: one Kafka broker and one PostgreSQL server, taken from (in order)
KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL, testcontainers when a Docker engine answers, or
the local stack (Kafka jars from Maven Central, embedded PostgreSQL). A template database
is migrated once; each test gets its own database copied from it and its own topic prefix,
so tests run in any order and never see each other's messages.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from hypothesis import settings as hypothesis_settings

from shared.db import drop_database, ensure_database, migrate, with_database
from shared.kafka_admin import create_topics, delete_topics
from shared.settings import Settings

# Property tests: no per-example deadline. On a shared 2-core machine an example can take
# longer than Hypothesis's 200 ms for reasons that have nothing to do with the code (and the
# flaky-deadline error then hides the real outcome); speed is measured by bench/, not here.
# `@settings(...)` on a test changes only what it names and keeps this profile's deadline.
hypothesis_settings.register_profile("cloudwallet", deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "cloudwallet"))

# Which servers a test needs follows from where it lives, so a new module cannot forget
# its marker: `-m "not integration and not e2e"` runs the unit tests alone, `-m reliability`
# the reliability suite (which needs the servers too, so it is also `integration`).
MARKERS_OF_FOLDER = {"integration": ("integration",), "e2e": ("e2e",), "browser": ("e2e",),
                     "reliability": ("reliability", "integration")}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for marker in MARKERS_OF_FOLDER.get(item.path.parent.name, ()):
            item.add_marker(marker)


@dataclass(frozen=True)
class Infrastructure:
    kafka_bootstrap_servers: str
    server_url: str  # PostgreSQL server URL; the database part is replaced per test


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def infrastructure() -> Iterator[Infrastructure]:
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    database = os.environ.get("DATABASE_URL")
    if kafka and database:
        yield Infrastructure(kafka, database)
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as k, \
                PostgresContainer("postgres:17", driver=None) as pg:
            yield Infrastructure(k.get_bootstrap_server(), pg.get_connection_url())
        return
    from deploy.stack import LocalStack

    root = Path(tempfile.mkdtemp(prefix="cloudwallet-test-"))
    stack = LocalStack(root, durable=False)
    stack.start()
    try:
        yield Infrastructure(stack.bootstrap_servers, stack.database_url())
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
async def template_database(infrastructure: Infrastructure) -> AsyncIterator[str]:
    """Migrated once per session; unique, so sessions can share one server."""
    name = f"cw_template_{uuid.uuid4().hex[:8]}"
    url = with_database(infrastructure.server_url, name)
    await migrate(url)
    try:
        yield name
    finally:
        await drop_database(url)


@dataclass(frozen=True)
class TestEnv:
    settings: Settings
    database_url: str

    def topic(self, name: str) -> str:
        return self.settings.topic(name)


@pytest.fixture
async def env(infrastructure: Infrastructure, template_database: str) -> AsyncIterator[TestEnv]:
    """A fresh database and a fresh set of topics for one test."""
    tag = uuid.uuid4().hex[:10]
    url = with_database(infrastructure.server_url, f"t_{tag}")
    await ensure_database(url, template=template_database)
    prefix = f"t{tag}."
    await create_topics(infrastructure.kafka_bootstrap_servers, prefix)
    settings = Settings(
        kafka_bootstrap_servers=infrastructure.kafka_bootstrap_servers,
        database_url=url,
        topic_prefix=prefix,
        group_prefix=prefix,
        outbox_poll_interval_s=0.05,
        log_json=False,
    )
    try:
        yield TestEnv(settings, url)
    finally:
        await drop_database(url)
        await delete_topics(infrastructure.kafka_bootstrap_servers, prefix)


@pytest.fixture
async def db(env: TestEnv) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(env.database_url)
    try:
        yield conn
    finally:
        await conn.close()
