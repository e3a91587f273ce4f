"""Infrastructure for benchmarks: the servers named by KAFKA_BOOTSTRAP_SERVERS and
DATABASE_URL, or a local stack started for the run; a fresh database and topic prefix."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from shared.db import drop_database, migrate, with_database
from shared.kafka_admin import create_topics, delete_topics
from shared.settings import Settings


@asynccontextmanager
async def bench_settings(**overrides: object) -> AsyncIterator[Settings]:
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    server = os.environ.get("DATABASE_URL")
    stack = None
    if not (kafka and server):
        from deploy.stack import LocalStack

        stack = LocalStack(Path(tempfile.mkdtemp(prefix="cloudwallet-bench-")), durable=True)
        stack.start()
        kafka, server = stack.bootstrap_servers, stack.database_url()
    tag = uuid.uuid4().hex[:8]
    url = with_database(server, f"bench_{tag}")
    try:
        await migrate(url)
        await create_topics(kafka, f"b{tag}.")
        fields: dict[str, object] = {
            "kafka_bootstrap_servers": kafka, "database_url": url, "topic_prefix": f"b{tag}.",
            "group_prefix": f"b{tag}.", "log_json": False, "log_level": "WARNING",
            "consumer_batch_timeout_ms": 10, "outbox_poll_interval_s": 0.05,
        }
        fields.update(overrides)
        yield Settings(**fields)  # type: ignore[arg-type]
    finally:
        await drop_database(url)
        await delete_topics(kafka, f"b{tag}.")
        if stack is not None:
            stack.stop()
            shutil.rmtree(stack.root, ignore_errors=True)
