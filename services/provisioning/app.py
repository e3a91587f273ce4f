"""The provisioning service: the saga's Kafka consumers and the portal's HTTP API."""

from __future__ import annotations

import asyncio

import structlog

from services.provisioning.api import register_routes
from services.provisioning.handlers import CONSUMER, ProvisioningHandlers
from services.provisioning.repository import SCHEMA
from shared.pricing import book_with
from shared.retention import PrunedTable
from shared.runtime import ServiceRuntime
from shared.settings import Settings, get_settings
from shared.topics import (
    CLOCK_TICKS,
    PORTAL_VM_REQUESTS,
    VCENTER_EVENTS,
    WALLET_DECISIONS,
    WALLET_EVENTS,
)

log = structlog.get_logger(__name__)


class ProvisioningService(ServiceRuntime):
    def __init__(self, settings: Settings) -> None:
        super().__init__("provisioning", SCHEMA, settings)
        self.handlers = h = ProvisioningHandlers(self, book_with(settings.rate_cards))
        # These handlers push the outbox rows they committed to the relay themselves; portal
        # intake writes its rows with the requests, in one statement, and wakes the relay.
        pushes = {"wake_relay": False}
        self.consume(WALLET_EVENTS, CONSUMER, h.on_wallet_events, **pushes)
        self.consume(PORTAL_VM_REQUESTS, CONSUMER, h.on_portal_requests)
        self.consume(WALLET_DECISIONS, CONSUMER, h.on_wallet_decisions, **pushes)
        self.consume(VCENTER_EVENTS, CONSUMER, h.on_vcenter_events, **pushes)
        self.consume(CLOCK_TICKS, CONSUMER, h.on_clock_ticks, **pushes)
        # Each inbox consumer refuses messages older than the window (`_young_enough`).
        self.pruned_tables = [PrunedTable(f"{SCHEMA}.inbox")]
        register_routes(self)

    async def start(self) -> None:
        await super().start()
        self.handlers.intake.start()
        self._resending = asyncio.create_task(self._resend_reservations())

    async def stop(self) -> None:
        self._resending.cancel()
        await asyncio.gather(self._resending, return_exceptions=True)
        await self.handlers.intake.stop()
        await self.handlers.settle()
        await super().stop()

    async def _resend_reservations(self) -> None:
        while True:
            try:
                await self.handlers.resend_reservations()
            except Exception:
                log.exception("resending reservations failed")
            await asyncio.sleep(self.settings.reservation_resend_interval_s)


def create_service(settings: Settings | None = None) -> ProvisioningService:
    return ProvisioningService(settings or get_settings())
