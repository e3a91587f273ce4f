"""The provisioning service: the saga's Kafka consumers and the portal's HTTP API."""

from __future__ import annotations

from services.provisioning.api import register_routes
from services.provisioning.handlers import CONSUMER, ProvisioningHandlers
from services.provisioning.repository import SCHEMA
from shared.runtime import ServiceRuntime
from shared.settings import Settings, get_settings
from shared.topics import (
    CLOCK_TICKS,
    PORTAL_VM_REQUESTS,
    VCENTER_EVENTS,
    WALLET_DECISIONS,
    WALLET_EVENTS,
)


class ProvisioningService(ServiceRuntime):
    def __init__(self, settings: Settings) -> None:
        super().__init__("provisioning", SCHEMA, settings)
        self.handlers = ProvisioningHandlers(self)
        self.consume(WALLET_EVENTS, CONSUMER, self.handlers.on_wallet_events)
        self.consume(PORTAL_VM_REQUESTS, CONSUMER, self.handlers.on_portal_requests)
        self.consume(WALLET_DECISIONS, CONSUMER, self.handlers.on_wallet_decisions)
        self.consume(VCENTER_EVENTS, CONSUMER, self.handlers.on_vcenter_events)
        self.consume(CLOCK_TICKS, CONSUMER, self.handlers.on_clock_ticks)
        register_routes(self)

    async def start(self) -> None:
        await super().start()
        self.handlers.intake.start()
        await self.handlers.resend_reservations()

    async def stop(self) -> None:
        await self.handlers.intake.stop()
        await self.handlers.settle()
        await super().stop()


def create_service(settings: Settings | None = None) -> ProvisioningService:
    return ProvisioningService(settings or get_settings())
