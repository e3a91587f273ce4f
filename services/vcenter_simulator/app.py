"""The vCenter hooks simulator: consumes `vcenter.commands`, publishes VM events to
`vcenter.events` keyed by vm_id, the way a real vCenter hook would (see
docs/vcenter-contract.md).

It keeps no state, so it needs no database or outbox: events are published straight from
the batch with an idempotent producer before the batch's offsets are committed; after a
crash the batch is redelivered and republished with the same event ids.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from fastapi import Depends
from pydantic import TypeAdapter
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.vcenter_simulator.domain import SimulatorConfig, respond
from shared.auth import MACHINES
from shared.consumer import Records, dead_letters, parse_records
from shared.contracts.vcenter import VcenterCommand
from shared.http import require
from shared.outbox import Outgoing, outgoing
from shared.runtime import ServiceRuntime
from shared.settings import Settings, get_settings
from shared.topics import VCENTER_COMMANDS, VCENTER_EVENTS

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


class VcenterSimulator(ServiceRuntime):
    def __init__(self, settings: Settings, config: SimulatorConfig) -> None:
        super().__init__("vcenter-simulator", None, settings)
        self.config = config
        self.consume(VCENTER_COMMANDS, CONSUMER, self.on_commands)

        @self.http.get("/config", tags=["simulator"],
                       dependencies=[Depends(require(*MACHINES))])
        async def current_config() -> dict[str, Any]:
            return asdict(self.config)

    async def on_commands(self, records: Records) -> None:
        good, bad = parse_records(records, COMMANDS)
        out: list[Outgoing] = dead_letters(self.settings, CONSUMER, bad)
        events_topic = self.settings.topic(VCENTER_EVENTS.name)
        for item in good:
            out += [outgoing(events_topic, event.vm_id, event)
                    for event in respond(item.message, self.config)]
        sends = [await self.producer.send(o.topic, o.value, key=o.key, partition=o.partition)
                 for o in out]
        await asyncio.gather(*sends)


def create_service(settings: Settings | None = None,
                   config: SimulatorConfig | None = None) -> VcenterSimulator:
    return VcenterSimulator(settings or get_settings(), config or SimulatorSettings().config())
