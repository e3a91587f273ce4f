"""The wallet service: Kafka consumers and the portal's HTTP API on one runtime."""

from __future__ import annotations

from services.wallet.api import register_routes
from services.wallet.handlers import CONSUMER, WalletHandlers
from services.wallet.repository import SCHEMA
from shared.retention import PrunedTable
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
        # Every handler pushes the outbox rows it committed to the relay itself.
        h, pushes = self.handlers, {"wake_relay": False}
        self.consume(PROVISIONING_REQUESTS, CONSUMER, h.on_reservation_requests,
                     commit_in_background=True, **pushes)
        self.consume(PROVISIONING_OUTCOMES, CONSUMER, h.on_provisioning_outcomes, **pushes)
        self.consume(BILLING_DEBITS, CONSUMER, h.on_billing_charges, **pushes)
        self.consume(WALLET_TOPUPS, CONSUMER, h.on_topups, **pushes)
        self.consume(CLOCK_TICKS, CONSUMER, h.on_clock_ticks, **pushes)
        # Each inbox claim refuses messages dated before the window (WalletFlow._claim);
        # a webhook message older than its signature's five minutes is refused by that.
        self.pruned_tables = [PrunedTable(f"{SCHEMA}.inbox"),
                              PrunedTable(f"{SCHEMA}.webhook_messages", "received_at")]
        register_routes(self)


def create_service(settings: Settings | None = None) -> WalletService:
    return WalletService(settings or get_settings())
