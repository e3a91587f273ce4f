"""The wallet service: Kafka consumers and the portal's HTTP API on one runtime."""

from __future__ import annotations

from services.wallet.api import register_routes
from services.wallet.handlers import CONSUMER, WalletHandlers
from services.wallet.repository import SCHEMA
from shared.runtime import ServiceRuntime
from shared.settings import Settings, get_settings
from shared.topics import (
    BILLING_DEBITS,
    CLOCK_TICKS,
    PROVISIONING_OUTCOMES,
    PROVISIONING_REQUESTS,
    WALLET_TOPUPS,
)


class WalletService(ServiceRuntime):
    def __init__(self, settings: Settings) -> None:
        super().__init__("wallet", SCHEMA, settings)
        self.handlers = WalletHandlers(self)
        self.consume(PROVISIONING_REQUESTS, CONSUMER, self.handlers.on_reservation_requests)
        self.consume(PROVISIONING_OUTCOMES, CONSUMER, self.handlers.on_provisioning_outcomes)
        self.consume(BILLING_DEBITS, CONSUMER, self.handlers.on_billing_charges)
        self.consume(WALLET_TOPUPS, CONSUMER, self.handlers.on_topups)
        self.consume(CLOCK_TICKS, CONSUMER, self.handlers.on_clock_ticks)
        register_routes(self)


def create_service(settings: Settings | None = None) -> WalletService:
    return WalletService(settings or get_settings())
