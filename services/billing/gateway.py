"""The payment gateway adapter used by auto top-up, and a simulated gateway.

A real adapter implements `PaymentGateway.charge`: charge `amount` to the card behind
`card_token`, using `attempt_id` as the gateway's idempotency key (billing asks again for
an attempt a crash left pending: a repeated id gets the first outcome and no second
charge), and answer with one of three outcomes. It must not raise for a declined card or
a slow gateway: `Declined` and `TimedOut` are answers. `TimedOut` means the outcome is
unknown (the gateway may still settle the charge): billing records it and never retries
it blindly.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol
from uuid import UUID

from shared.money import Money


@dataclass(frozen=True, slots=True)
class Succeeded:
    gateway_reference: str


@dataclass(frozen=True, slots=True)
class Declined:
    reason: str


@dataclass(frozen=True, slots=True)
class TimedOut:
    after_s: float


ChargeOutcome = Succeeded | Declined | TimedOut


class PaymentGateway(Protocol):
    async def charge(self, attempt_id: UUID, card_token: str, amount: Money) -> ChargeOutcome:
        ...


async def charge_within(gateway: PaymentGateway, attempt_id: UUID, card_token: str,
                        amount: Money, timeout_s: float) -> ChargeOutcome:
    """Call the gateway, turning a call that takes longer than `timeout_s` into TimedOut."""
    try:
        return await asyncio.wait_for(gateway.charge(attempt_id, card_token, amount), timeout_s)
    except TimeoutError:
        return TimedOut(timeout_s)


@dataclass
class SimulatedGateway:
    """Deterministic by card token: `tok_decline...` declines, `tok_timeout...` times out,
    anything else succeeds; a repeated attempt id gets its first outcome. Keeps every call
    so tests can check nothing was charged twice."""

    calls: list[tuple[UUID, str, Money]] = field(default_factory=list)
    outcomes: dict[UUID, ChargeOutcome] = field(default_factory=dict)

    async def charge(self, attempt_id: UUID, card_token: str, amount: Money) -> ChargeOutcome:
        self.calls.append((attempt_id, card_token, amount))
        if attempt_id not in self.outcomes:
            self.outcomes[attempt_id] = self._decide(attempt_id, card_token)
        return self.outcomes[attempt_id]

    @staticmethod
    def _decide(attempt_id: UUID, card_token: str) -> ChargeOutcome:
        if card_token.startswith("tok_decline"):
            return Declined("card declined by issuer (simulated)")
        if card_token.startswith("tok_timeout"):
            return TimedOut(0.0)
        return Succeeded(f"sim-{attempt_id}")
