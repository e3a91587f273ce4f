"""Creating the topics of the topic map on a broker."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from shared.topics import ALL_TOPICS, Topic


async def create_topics(bootstrap_servers: str, prefix: str = "",
                        topics: Iterable[Topic] = ALL_TOPICS,
                        security: dict[str, Any] | None = None) -> list[str]:
    """Create missing topics; returns the full names of all requested topics. `security`:
    aiokafka's SASL options, for a broker that requires them (shared/kafka_security.py)."""
    wanted = [
        NewTopic(f"{prefix}{t.name}", num_partitions=t.partitions, replication_factor=1,
                 topic_configs={"retention.ms": str(t.retention_ms)})
        for t in topics
    ]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **(security or {}))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
    return [t.name for t in wanted]


async def delete_topics(bootstrap_servers: str, prefix: str) -> int:
    """Delete every topic whose name starts with `prefix` (test and benchmark clean-up: a
    broker holds open files for every partition it keeps)."""
    if not prefix:
        raise ValueError("refusing to delete topics without a prefix")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if doomed:
            try:
                await admin.delete_topics(doomed)
            except KafkaError:
                pass  # best effort: a topic already gone is what we wanted
        return len(doomed)
    finally:
        await admin.close()
