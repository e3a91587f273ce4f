"""The vCenter hooks simulator: consumes `vcenter.commands`, publishes VM events to
`vcenter.events` keyed by vm_id, the way a real vCenter hook would (see
docs/vcenter-contract.md).

It keeps no state, so it needs no database or outbox: events are published straight from
the batch with an idempotent producer before the batch's offsets are committed; after a
crash the batch is redelivered and republished with the same event ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Response
from faststream.kafka import KafkaBroker
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import TypeAdapter
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.vcenter_simulator.domain import SimulatorConfig, respond
from shared.consumer import Records, dead_letters, parse_records, subscribe_batches
from shared.contracts.vcenter import VcenterCommand
from shared.outbox import Outgoing, outgoing
from shared.settings import Settings, get_settings
from shared.topics import VCENTER_COMMANDS, VCENTER_EVENTS

log = structlog.get_logger(__name__)

CONSUMER = "vcenter-simulator"
COMMANDS: TypeAdapter[Any] = TypeAdapter(VcenterCommand)


class SimulatorSettings(BaseSettings):
    """SimulatorConfig from the environment: VCENTER_SIM_CREATE_DELAY_S=30, ..."""

    model_config = SettingsConfigDict(env_prefix="VCENTER_SIM_", env_file=".env",
                                      extra="ignore")

    create_delay_s: int = SimulatorConfig.create_delay_s
    power_on_delay_s: int = SimulatorConfig.power_on_delay_s
    power_delay_s: int = SimulatorConfig.power_delay_s
    resize_delay_s: int = SimulatorConfig.resize_delay_s
    delete_delay_s: int = SimulatorConfig.delete_delay_s
    fail_prefix: str = SimulatorConfig.fail_prefix
    silent_prefix: str = SimulatorConfig.silent_prefix
    failure_percent: int = SimulatorConfig.failure_percent
    max_vcpu: int = SimulatorConfig.max_vcpu

    def config(self) -> SimulatorConfig:
        return SimulatorConfig(**self.model_dump())


class VcenterSimulator:
    def __init__(self, settings: Settings, config: SimulatorConfig) -> None:
        self.name = "vcenter-simulator"
        self.settings = settings
        self.config = config
        self.broker = KafkaBroker(settings.kafka_bootstrap_servers, client_id=self.name,
                                  logger=None)
        self.http = FastAPI(title="cloudwallet vcenter-simulator", lifespan=self._lifespan)
        self._producer: AIOKafkaProducer | None = None
        self._started = False
        subscribe_batches(self.broker, settings, VCENTER_COMMANDS, CONSUMER, self.on_commands)
        self._add_routes()

    async def on_commands(self, records: Records) -> None:
        good, bad = parse_records(records, COMMANDS)
        out: list[Outgoing] = dead_letters(self.settings, CONSUMER, bad)
        events_topic = self.settings.topic(VCENTER_EVENTS.name)
        for item in good:
            out += [outgoing(events_topic, event.vm_id, event)
                    for event in respond(item.message, self.config)]
        assert self._producer is not None, "simulator not started"
        sends = [await self._producer.send(o.topic, o.value, key=o.key, partition=o.partition)
                 for o in out]
        await asyncio.gather(*sends)

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers, client_id=self.name,
            acks="all", enable_idempotence=True, linger_ms=5)
        await self._producer.start()
        await self.broker.start()
        self._started = True
        log.info("service started", service=self.name, config=asdict(self.config))

    async def stop(self) -> None:
        self._started = False
        await self.broker.stop()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    @asynccontextmanager
    async def _lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    def _add_routes(self) -> None:
        @self.http.get("/health", tags=["operations"])
        async def health(response: Response) -> dict[str, Any]:
            kafka = self._started and await self.broker.ping(timeout=2)
            response.status_code = 200 if kafka else 503
            return {"service": self.name, "status": "ok" if kafka else "unavailable",
                    "kafka": kafka}

        @self.http.get("/metrics", tags=["operations"])
        async def metrics() -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

        @self.http.get("/config", tags=["simulator"])
        async def config() -> dict[str, Any]:
            return asdict(self.config)


def create_service(settings: Settings | None = None,
                   config: SimulatorConfig | None = None) -> VcenterSimulator:
    return VcenterSimulator(settings or get_settings(), config or SimulatorSettings().config())
