"""The oracle's price list and rating, written from docs/billing.md ("Rating and rounding",
"The monthly cap") and the seed's tiers. Standard library only, like the oracle."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from functools import lru_cache

from deploy.sim.scenario import Size


# --- the price list (docs/billing.md "Rating and rounding"; the seed's tiers) ---------------
@dataclass(frozen=True)
class Card:
    version: str
    effective_from: datetime
    tier_monthly: tuple[tuple[str, int], ...]
    vcpu_hour: Fraction
    ram_gb_hour: Fraction
    disk_gb_hour: Fraction
    currency: str = "ZAR"  # a wallet is priced only by the cards of its own currency


DEFAULT_CARD = Card("2025-01", datetime(2025, 1, 1, tzinfo=UTC), (
    ("small", 15_000), ("medium", 30_000), ("large", 60_000), ("enterprise", 120_000)),
    Fraction(12), Fraction(4), Fraction(1, 50))
HOURS_PER_MONTH = 730
REFUND_CAP_PERCENT = 95
VAT_PERCENT = 15
# vCenter simulator delays (docs/vcenter-contract.md): create, power on after it, power,
# resize, delete.
CREATE_S, POWER_ON_S, POWER_S, RESIZE_S, DELETE_S = 30, 5, 5, 10, 10


def card_of(document: dict[str, object]) -> Card:
    """A rate card version of the scenario (the JSON the services read too)."""
    tiers = document["tier_monthly_minor"]
    assert isinstance(tiers, dict)
    return Card(str(document["version"]),
                datetime.fromisoformat(str(document["effective_from"])),
                tuple((str(k), int(v)) for k, v in tiers.items()),
                Fraction(str(document["vcpu_hour"])), Fraction(str(document["ram_gb_hour"])),
                Fraction(str(document["disk_gb_hour"])), str(document["currency"]))


def hourly_rate(size: Size, card: Card = DEFAULT_CARD) -> Fraction:
    if size.tier:
        return Fraction(dict(card.tier_monthly)[size.tier], HOURS_PER_MONTH)
    return size.vcpu * card.vcpu_hour + size.ram_gb * card.ram_gb_hour \
        + size.disk_gb * card.disk_gb_hour


def monthly_price(size: Size, card: Card = DEFAULT_CARD) -> Fraction:
    if size.tier:
        return Fraction(dict(card.tier_monthly)[size.tier])
    return hourly_rate(size, card) * HOURS_PER_MONTH


def hold_for(size: Size, card: Card = DEFAULT_CARD) -> int:
    """What must be available to provision: a month at the card in effect, rounded up."""
    return math.ceil(monthly_price(size, card))


@lru_cache(maxsize=100_000)
def rate(ran: tuple[tuple[Size, int], ...], card: Card = DEFAULT_CARD) -> tuple[int, int]:
    """An hour's charge (its segments' exact charges summed, rounded down once) and its cap
    (the highest monthly price of the sizes that ran, rounded down), at the hour's card."""
    exact = sum((hourly_rate(size, card) * Fraction(s, 3600) for size, s in ran), Fraction(0))
    return math.floor(exact), math.floor(max(monthly_price(size, card) for size, _s in ran))


def vat(net: int) -> int:
    magnitude = (abs(net) * VAT_PERCENT * 2 + 100) // 200
    return magnitude if net >= 0 else -magnitude
