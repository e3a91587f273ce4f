"""The metering service: the `vcenter.events` consumer and its HTTP API on one runtime."""

from __future__ import annotations

from services.metering.api import register_routes
from services.metering.handlers import CONSUMER, MeteringHandlers
from services.metering.repository import SCHEMA
from shared.retention import PrunedTable
from shared.runtime import ServiceRuntime
from shared.settings import Settings, get_settings
from shared.topics import VCENTER_EVENTS


class MeteringService(ServiceRuntime):
    def __init__(self, settings: Settings) -> None:
        super().__init__("metering", SCHEMA, settings)
        self.handlers = MeteringHandlers(self)
        self.pruned_tables = [PrunedTable(f"{SCHEMA}.inbox")]
        self.consume(VCENTER_EVENTS, CONSUMER, self.handlers.on_vcenter_events)
        register_routes(self)


def create_service(settings: Settings | None = None) -> MeteringService:
    return MeteringService(settings or get_settings())
