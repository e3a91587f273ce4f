"""What an operator watches for growth before it hurts, refreshed on each `/metrics` scrape:
the inbox and outbox rows of the service's schema, the age of its oldest outbox row, and its
consumer lag per topic (end offsets less the group's committed offsets).

Every figure costs a bounded read per scrape: rows are counted exactly up to
`EXACT_COUNT_UP_TO` and estimated from `pg_class.reltuples` beyond (a count of millions of
rows per scrape would cost more than the figure is worth); the oldest outbox row is the
first by id (its primary key); lag is one offsets request per group and one end-offsets
request per scrape.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import Gauge

from shared.kafka_security import client_options
from shared.settings import Settings
from shared.topics import Topic

log = structlog.get_logger(__name__)

EXACT_COUNT_UP_TO = 100_000
SCRAPE_TIMEOUT_S = 5.0

TABLE_ROWS = Gauge("cloudwallet_table_rows",
                   "Rows of a technical table (exact up to 100,000, then estimated)",
                   ["service", "table"])
OUTBOX_OLDEST_AGE = Gauge("cloudwallet_outbox_oldest_age_seconds",
                          "Age of the oldest row waiting in the outbox (0: empty)", ["service"])
CONSUMER_LAG = Gauge("cloudwallet_consumer_lag",
                     "Records on a topic not yet committed by the service's consumer group",
                     ["service", "topic"])


@dataclass(frozen=True, slots=True)
class Subscription:
    topic: Topic
    group: str  # full group id
    topic_name: str  # full topic name


async def table_rows(conn: asyncpg.Connection, table: str) -> int:
    exact: int = await conn.fetchval(
        f"SELECT count(*) FROM (SELECT FROM {table} LIMIT {EXACT_COUNT_UP_TO + 1}) capped")
    if exact <= EXACT_COUNT_UP_TO:
        return exact
    estimate: float = await conn.fetchval("SELECT reltuples FROM pg_class WHERE oid = $1::regclass",
                                          table)
    return max(int(estimate), exact)


async def oldest_outbox_age_s(conn: asyncpg.Connection, schema: str) -> float:
    oldest: datetime | None = await conn.fetchval(
        f"SELECT created_at FROM {schema}.outbox ORDER BY id LIMIT 1")
    if oldest is None:
        return 0.0
    age: float = await conn.fetchval("SELECT extract(epoch FROM now() - $1::timestamptz)",
                                     oldest)
    return max(age, 0.0)


class OperationsMetrics:
    """Refreshes the gauges of one service; Kafka clients are made at the first scrape."""

    def __init__(self, service: str, schema: str | None, settings: Settings) -> None:
        self.service, self.schema, self.settings = service, schema, settings
        self.subscriptions: list[Subscription] = []
        self._admin: AIOKafkaAdminClient | None = None
        self._offsets: AIOKafkaConsumer | None = None

    def subscribed(self, topic: Topic, consumer: str) -> None:
        self.subscriptions.append(Subscription(
            topic, self.settings.group(f"{consumer}.{topic.name}"),
            self.settings.topic(topic.name)))

    async def refresh(self, pool: asyncpg.Pool | None) -> None:
        try:
            await asyncio.wait_for(self._refresh(pool), SCRAPE_TIMEOUT_S)
        except Exception:  # a scrape shows the last figures rather than failing
            log.warning("operations metrics not refreshed", exc_info=True)

    async def _refresh(self, pool: asyncpg.Pool | None) -> None:
        if pool is not None and self.schema is not None:
            async with pool.acquire() as conn:
                for table in ("inbox", "outbox"):
                    TABLE_ROWS.labels(self.service, f"{self.schema}.{table}").set(
                        await table_rows(conn, f"{self.schema}.{table}"))
                OUTBOX_OLDEST_AGE.labels(self.service).set(
                    await oldest_outbox_age_s(conn, self.schema))
        if self.subscriptions:
            for topic, lag in (await self.lag()).items():
                CONSUMER_LAG.labels(self.service, topic).set(lag)

    async def lag(self) -> dict[str, int]:
        """Per topic (its name in the topic map): end offsets less committed offsets."""
        admin, offsets = await self._clients()
        partitions = [TopicPartition(s.topic_name, p) for s in self.subscriptions
                      for p in range(s.topic.partitions)]
        ends = await offsets.end_offsets(partitions)
        lag: dict[str, int] = {}
        for s in self.subscriptions:
            committed = await admin.list_consumer_group_offsets(s.group)
            total = 0
            for p in range(s.topic.partitions):
                tp = TopicPartition(s.topic_name, p)
                done = committed.get(tp)
                total += max(ends.get(tp, 0) - (done.offset if done and done.offset >= 0
                                                else 0), 0)
            lag[s.topic.name] = lag.get(s.topic.name, 0) + total
        return lag

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.settings.kafka_bootstrap_servers,
                client_id=f"{self.service}-metrics", **client_options(self.settings))
            await admin.start()
            self._admin = admin
        if self._offsets is None:
            offsets = AIOKafkaConsumer(
                bootstrap_servers=self.settings.kafka_bootstrap_servers,
                client_id=f"{self.service}-metrics", enable_auto_commit=False,
                **client_options(self.settings))
            await offsets.start()
            self._offsets = offsets
        return self._admin, self._offsets

    async def close(self) -> None:
        clients: Sequence[AIOKafkaAdminClient | AIOKafkaConsumer | None] = (
            self._admin, self._offsets)
        for client in clients:
            if client is not None:
                try:
                    await (client.close() if isinstance(client, AIOKafkaAdminClient)
                           else client.stop())
                except Exception:
                    log.warning("metrics client did not close", exc_info=True)
        self._admin = self._offsets = None
