"""Auto top-up: a low-balance event of a wallet with auto top-up becomes one attempt (its id
derived from the event, so a replay asks nothing again), recorded as pending before the
gateway is asked; the outcome is recorded and announced in one transaction. Attempts a crash
left pending are asked again under the same id (the gateway's idempotency key)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from uuid import UUID

import structlog
from prometheus_client import Gauge

from services.billing import repository as repo
from services.billing.domain import Attempt
from services.billing.gateway import (
    ChargeOutcome,
    Declined,
    PaymentGateway,
    Succeeded,
    TimedOut,
    charge_within,
)
from shared.contracts.base import Envelope, deterministic_id
from shared.contracts.billing import AutoTopUpDeclined
from shared.contracts.wallet import AutoTopUpSettings, TopUpWallet, WalletLowBalance
from shared.money import MoneyModel
from shared.outbox import Outgoing, enqueue, outgoing
from shared.runtime import ServiceRuntime
from shared.topics import BILLING_EVENTS, WALLET_TOPUPS

log = structlog.get_logger(__name__)


def attempt_id_for(low_balance_event_id: UUID) -> UUID:
    return deterministic_id("billing.auto_topup", low_balance_event_id)


# Auto top-ups left pending longer than this are not settled automatically.
SETTLE_ATTEMPTS_WITHIN = timedelta(hours=1)
ABANDONED_ATTEMPTS = Gauge("cloudwallet_billing_topups_pending_too_long",
                           "Auto top-up attempts pending too long to settle automatically")


def attempt_for(low: WalletLowBalance, auto: AutoTopUpSettings) -> Attempt:
    return Attempt(attempt_id_for(low.event_id), low.wallet_id, auto.amount.to_money(),
                   auto.card_token, low.event_id, low.correlation_id or low.event_id,
                   low.occurred_at)


class AutoTopUps:
    def __init__(self, runtime: ServiceRuntime, gateway: PaymentGateway,
                 gateway_timeout_s: float) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.gateway = gateway
        self.gateway_timeout_s = gateway_timeout_s

    def _out(self, topic: str, key: object, message: Envelope) -> Outgoing:
        return outgoing(self.settings.topic(topic), key, message)


    async def settle_pending_attempts(self, older_than: timedelta,
                                      younger_than: timedelta = SETTLE_ATTEMPTS_WITHIN) -> int:
        """Ask the gateway again, with the same attempt id (its idempotency key), for the
        attempts left pending: the process stopped after recording the attempt, before or
        after asking the gateway, and before the outcome committed. The card is charged once,
        and the wallet credited once. Older attempts are left to an operator: a top-up that
        late may no longer be wanted (auto top-up turned off, a top-up by hand)."""
        younger_than = max(younger_than, 2 * older_than)  # never an empty window
        async with self.runtime.pool.acquire() as conn:
            attempts = await repo.pending_attempts(conn, older_than, younger_than)
            abandoned = await repo.abandoned_attempts(conn, younger_than)
        ABANDONED_ATTEMPTS.set(abandoned)
        if abandoned:
            log.warning("auto top-ups pending too long to settle: an operator must check them "
                        "with the gateway (billing.topup_attempts, status pending)",
                        attempts=abandoned)
        if attempts:
            log.warning("settling auto top-ups left pending", attempts=len(attempts))
            await self.charge(attempts)
        return len(attempts)

    async def charge(self, attempts: list[Attempt]) -> None:
        """Each attempt was committed as pending before this call: a replay never charges it
        again, and one left pending by a crash is settled by `settle_pending_attempts`."""
        outcomes = await asyncio.gather(*(self._charge_one(attempt) for attempt in attempts))
        messages: dict[UUID, Outgoing] = {}
        decided: list[tuple[UUID, str, str]] = []
        for attempt, outcome in zip(attempts, outcomes, strict=True):
            match outcome:
                case Succeeded(gateway_reference=reference):
                    decided.append((attempt.attempt_id, "succeeded", reference))
                    messages[attempt.attempt_id] = self._out(
                        WALLET_TOPUPS.name, attempt.wallet_id, TopUpWallet(
                            event_id=attempt.attempt_id, payment_id=str(attempt.attempt_id),
                            wallet_id=attempt.wallet_id, amount=MoneyModel.of(attempt.amount),
                            source="auto_topup", correlation_id=attempt.correlation_id,
                            causation_id=attempt.cause_id, occurred_at=attempt.occurred_at))
                    continue
                case Declined(reason=reason):
                    decided.append((attempt.attempt_id, "declined", reason))
                case TimedOut(after_s=after):
                    reason = (f"payment gateway timed out after {after:g} s; outcome unknown, "
                              f"not retried")
                    decided.append((attempt.attempt_id, "timed_out", reason))
            messages[attempt.attempt_id] = self._out(
                BILLING_EVENTS.name, attempt.wallet_id, AutoTopUpDeclined(
                    event_id=deterministic_id("billing.auto_topup_declined", attempt.attempt_id),
                    wallet_id=attempt.wallet_id, attempt_id=attempt.attempt_id, reason=reason,
                    correlation_id=attempt.correlation_id, causation_id=attempt.cause_id,
                    occurred_at=attempt.occurred_at))
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            # only outcomes recorded now: another settle may have decided the attempt already
            decided_now = await repo.decide_attempts(conn, decided)
            await enqueue(conn, repo.SCHEMA,
                          [m for i, m in messages.items() if i in decided_now])
        self.runtime.relay.notify()

    async def _charge_one(self, attempt: Attempt) -> ChargeOutcome:
        try:
            return await charge_within(self.gateway, attempt.attempt_id, attempt.card_token,
                                       attempt.amount, self.gateway_timeout_s)
        except Exception as error:  # an adapter bug must not leave the consumer stuck
            log.exception("payment gateway failed", attempt_id=str(attempt.attempt_id))
            return TimedOut(0.0) if isinstance(error, TimeoutError) else Declined(
                f"payment gateway error: {type(error).__name__}")
