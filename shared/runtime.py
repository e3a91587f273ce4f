"""What every service runs on: a database pool, a FastStream Kafka broker for consuming,
an outbox relay for publishing, and an HTTP app with health and metrics endpoints."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Response
from faststream.kafka import KafkaBroker
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.consumer import (
    BackgroundCommits,
    BatchHandler,
    Incoming,
    Records,
    Rejected,
    subscribe_batches,
)
from shared.db import create_pool
from shared.http import (
    BodySizeLimit,
    Guard,
    InFlightLimit,
    MachineKey,
    document_problems,
    install_problem_handlers,
)
from shared.kafka_security import broker_security, client_options
from shared.operations import OperationsMetrics
from shared.outbox import OutboxRelay
from shared.retention import InboxPruner, PrunedTable, oldest_accepted, refuse_expired
from shared.settings import Settings
from shared.topics import Topic

log = structlog.get_logger(__name__)


class ServiceRuntime:
    """`schema` None: a stateless service (no outbox) that publishes with `producer`
    directly; it still reads the database for its callers' API keys."""

    def __init__(self, name: str, schema: str | None, settings: Settings) -> None:
        self.name = name
        self.schema = schema
        self.settings = settings
        self.broker = KafkaBroker(settings.kafka_bootstrap_servers, client_id=name,
                                  logger=None, security=broker_security(settings))
        self.http = FastAPI(title=f"cloudwallet {name}", version="1", lifespan=self._lifespan)
        self.http.add_middleware(BodySizeLimit, max_bytes=settings.max_request_body_bytes)
        # added last, so it runs first: a refused request costs no body reading
        self.http.add_middleware(InFlightLimit, max_in_flight=settings.max_requests_in_flight)
        install_problem_handlers(self.http)
        document_problems(self.http)
        self.http.state.guard = Guard(lambda: self._auth_pool or self.pool,
                                      settings.api_rate_per_s, settings.api_rate_burst)
        self._pool: asyncpg.Pool | None = None
        self._auth_pool: asyncpg.Pool | None = None
        self._relay_pool: asyncpg.Pool | None = None
        self._producer: AIOKafkaProducer | None = None
        self._relay: OutboxRelay | None = None
        self._background_commits: list[BackgroundCommits] = []
        # Tables pruned by age (shared/retention.py): a service lists its inbox here only
        # once each of its inbox consumers refuses messages older than the window.
        self.pruned_tables: list[PrunedTable] = []
        self.pruner: InboxPruner | None = None
        self.operations = OperationsMetrics(name, schema, settings)
        self._started = False
        self._add_operational_routes()

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "service not started"
        return self._pool

    @property
    def producer(self) -> AIOKafkaProducer:
        assert self._producer is not None, "service not started"
        return self._producer

    @property
    def relay(self) -> OutboxRelay:
        assert self._relay is not None, "service not started"
        return self._relay

    def consume(self, topic: Topic, consumer: str, handler: BatchHandler, *,
                wake_relay: bool = True, commit_in_background: bool = False) -> None:
        """Consume `topic` in batches; after each committed batch, wake the outbox relay
        (`wake_relay=False`: the handler pushes what it committed to the relay itself).

        A pushing handler's rows reach the table but not the relay if its commit reply is
        lost, and an instance taking over partitions may find rows a crashed one committed:
        a failed batch and an assignment therefore wake a drain, which goes before the next
        push, so those rows still leave ahead of later rows of their keys."""

        def drain() -> None:
            if self._relay is not None:
                self._relay.notify()

        async def on_batch(records: Records) -> None:
            try:
                await handler(records)
            except BaseException:
                drain()
                raise
            if wake_relay:
                drain()

        self.operations.subscribed(topic, consumer)
        commits = subscribe_batches(self.broker, self.settings, topic, consumer, on_batch,
                                    commit_in_background=commit_in_background,
                                    on_assigned=drain)
        if commits is not None:
            self._background_commits.append(commits)

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            client_id=f"{self.name}-outbox", acks="all", enable_idempotence=True,
            linger_ms=0, max_batch_size=1_000_000, max_request_size=4_000_000,
            **client_options(self.settings),
        )
        await self._producer.start()
        if self.schema is not None:
            self._pool = await create_pool(self.settings.database_url,
                                           self.settings.db_pool_max_size)
            self._relay_pool = await create_pool(self.settings.database_url, 2,
                                                 durable_commits=False)
            self._relay = OutboxRelay(self._relay_pool, self.schema, self._producer,
                                      self.settings.outbox_batch_size,
                                      self.settings.outbox_poll_interval_s)
            self._relay.start()
            # A simulation's event clock is not the wall clock: wall age proves nothing there.
            if self.pruned_tables and self.settings.event_clock == "wall":
                self.pruner = InboxPruner(
                    self._relay_pool, self.pruned_tables, self.inbox_retention,
                    batch=self.settings.inbox_prune_batch,
                    interval_s=self.settings.inbox_prune_interval_s)
                self.pruner.start()
        else:
            self._auth_pool = await create_pool(self.settings.database_url, 2)
        await self.broker.start()
        # What exists now lives as long as the process: keep it out of every GC pass, so
        # collections triggered by batch allocations stay cheap.
        gc.freeze()
        self._started = True
        log.info("service started", service=self.name)

    async def stop(self) -> None:
        self._started = False
        for commits in self._background_commits:  # a consumer's close revokes nothing
            await commits.flush()
        await self.broker.stop()
        if self.pruner is not None:
            await self.pruner.stop()
        await self.operations.close()
        if self._relay is not None:
            await self._relay.stop()
        if self._producer is not None:
            await self._producer.stop()
        if self._pool is not None:
            await self._pool.close()
        if self._relay_pool is not None:
            await self._relay_pool.close()
        if self._auth_pool is not None:
            await self._auth_pool.close()
        log.info("service stopped", service=self.name)

    @property
    def inbox_retention(self) -> timedelta:
        return timedelta(days=self.settings.inbox_retention_days)

    def refuse_expired(self, items: Sequence[Incoming[Any]], clock: datetime | None
                       ) -> tuple[list[Incoming[Any]], list[Rejected]]:
        """A batch split into messages the inbox can judge and those dated before the
        window, by the consumer's latest clock tick (none yet: nothing is refused)."""
        if clock is None:
            return list(items), []
        oldest = oldest_accepted(clock, self.inbox_retention,
                                 timedelta(days=self.settings.inbox_refusal_margin_days))
        return refuse_expired(items, oldest)

    @asynccontextmanager
    async def _lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    def _add_operational_routes(self) -> None:
        @self.http.get("/health", tags=["operations"])
        async def health(response: Response) -> dict[str, Any]:
            checks = {"kafka": False}
            if self.schema is not None:
                checks["database"] = False
            if self._started:
                checks["kafka"] = await self.broker.ping(timeout=2)
                if self._pool is not None:
                    try:
                        await self._pool.fetchval("SELECT 1")
                        checks["database"] = True
                    except Exception:
                        pass
            healthy = all(checks.values())
            response.status_code = 200 if healthy else 503
            return {"service": self.name, "status": "ok" if healthy else "unavailable", **checks}

        @self.http.get("/metrics", tags=["operations"], response_class=Response, responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                  "description": "Prometheus text format"}})
        async def metrics(by: MachineKey) -> Response:
            await self.operations.refresh(self._pool)
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
