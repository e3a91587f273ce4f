"""The billing service: usage and wallet-event consumers and the statements API."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog

from services.billing.api import register_routes
from services.billing.gateway import PaymentGateway, SimulatedGateway
from services.billing.handlers import CONSUMER, BillingHandlers
from services.billing.repository import SCHEMA
from shared.pricing import RateCardBook, book_with
from shared.runtime import ServiceRuntime
from shared.settings import Settings, get_settings
from shared.topics import METERING_USAGE, WALLET_EVENTS

# How long (event time, after a month ends) a close waits for the wallet to confirm the
# month's debits before closing anyway and listing the unconfirmed ones as mismatches.
DEFAULT_CLOSE_GRACE = timedelta(hours=24)
DEFAULT_GATEWAY_TIMEOUT_S = 10.0
# Consumers of metering.usage in this process (one group: the partitions are split between
# them), so one batch is rated while another waits for the database.
DEFAULT_USAGE_CONSUMERS = 2
# How often auto top-ups left pending by a crash are settled, and how old one must be: far
# older than a gateway call (this process's own calls in flight are not touched).
SETTLE_ATTEMPTS_EVERY_S = 60.0
SETTLE_ATTEMPTS_OLDER_THAN = timedelta(minutes=2)

log = structlog.get_logger(__name__)


class BillingService(ServiceRuntime):
    def __init__(self, settings: Settings, *, book: RateCardBook | None = None,
                 gateway: PaymentGateway | None = None,
                 close_grace: timedelta = DEFAULT_CLOSE_GRACE,
                 gateway_timeout_s: float = DEFAULT_GATEWAY_TIMEOUT_S,
                 usage_consumers: int = DEFAULT_USAGE_CONSUMERS) -> None:
        super().__init__("billing", SCHEMA, settings)
        self.gateway = gateway or SimulatedGateway()
        self.handlers = BillingHandlers(self, book or book_with(settings.rate_cards),
                                        self.gateway, close_grace, gateway_timeout_s)
        for _ in range(usage_consumers):
            self.consume(METERING_USAGE, CONSUMER, self.handlers.on_usage)
        self.consume(WALLET_EVENTS, CONSUMER, self.handlers.on_wallet_events)
        register_routes(self)
        self._settle_after = max(SETTLE_ATTEMPTS_OLDER_THAN,
                                 timedelta(seconds=3 * gateway_timeout_s))
        self._settling: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await super().start()
        self._settling = asyncio.create_task(self._settle_pending_attempts())

    async def stop(self) -> None:
        if self._settling is not None:
            self._settling.cancel()
            await asyncio.gather(self._settling, return_exceptions=True)
            self._settling = None
        await super().stop()

    async def _settle_pending_attempts(self) -> None:
        while True:
            try:
                await self.handlers.settle_pending_attempts(self._settle_after)
            except Exception:
                log.exception("settling pending auto top-ups failed")
            await asyncio.sleep(SETTLE_ATTEMPTS_EVERY_S)


def create_service(settings: Settings | None = None) -> BillingService:
    return BillingService(settings or get_settings())
