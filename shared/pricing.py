"""The rate card: one pricing module for estimates, provisioning holds and billing.

Rates are exact fractions of a minor unit; only a final amount is rounded, once:
charges round down (in the customer's favour), holds and estimates of what must be
available round up (so a reservation never under-covers a month).
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import TYPE_CHECKING

from shared.money import Money

if TYPE_CHECKING:
    from shared.contracts.vm import TierName, VmSpec

SECONDS_PER_HOUR = 3600


@dataclass(frozen=True)
class RateCard:
    version: str
    effective_from: datetime
    currency: str
    # Monthly price of each tier, in minor units.
    tier_monthly_minor: dict[str, int]
    # Custom sizes: minor units per resource-hour (exact fractions, e.g. Fraction(1, 50)).
    vcpu_hour: Fraction
    ram_gb_hour: Fraction
    disk_gb_hour: Fraction
    hours_per_month: int = 730

    def hourly_rate(self, spec: VmSpec) -> Fraction:
        """Exact price of one hour at this size, in minor units."""
        if spec.tier is not None:
            return Fraction(self.tier_monthly_minor[spec.tier], self.hours_per_month)
        return (
            spec.vcpu * self.vcpu_hour
            + spec.ram_gb * self.ram_gb_hour
            + spec.disk_gb * self.disk_gb_hour
        )

    def monthly_price(self, spec: VmSpec) -> Fraction:
        if spec.tier is not None:
            return Fraction(self.tier_monthly_minor[spec.tier])
        return self.hourly_rate(spec) * self.hours_per_month

    def exact_charge(self, spec: VmSpec, seconds: int) -> Fraction:
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        return self.hourly_rate(spec) * Fraction(seconds, SECONDS_PER_HOUR)


def round_charge(exact: Fraction, currency: str) -> Money:
    """A charge: rounded down, so rounding never costs the customer."""
    return Money(math.floor(exact), currency)


def round_requirement(exact: Fraction, currency: str) -> Money:
    """A sum that must be available (estimates, holds): rounded up."""
    return Money(math.ceil(exact), currency)


@dataclass(frozen=True)
class Estimate:
    rate_card_version: str
    hourly: Money
    monthly: Money


@dataclass(frozen=True)
class RateCardBook:
    """All rate card versions, by currency and the moment each took effect. History is never
    rewritten. A wallet is priced only with the cards of its own currency: no rate is ever
    converted or guessed, and a currency with no card in effect has no price."""

    cards: tuple[RateCard, ...] = field(default_factory=tuple)
    _by_currency: dict[str, tuple[RateCard, ...]] = field(init=False, repr=False, compare=False)
    _starts: dict[str, list[datetime]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.cards:
            raise ValueError("a rate card book needs at least one card")
        by_currency: dict[str, tuple[RateCard, ...]] = {}
        for card in self.cards:
            by_currency[card.currency] = (*by_currency.get(card.currency, ()), card)
        for currency, cards in by_currency.items():
            starts = [c.effective_from for c in cards]
            if starts != sorted(starts) or len(set(starts)) != len(starts):
                raise ValueError(f"the {currency} rate cards must be in strictly increasing "
                                 "effective order")
        if len({c.version for c in self.cards}) != len(self.cards):
            raise ValueError("rate card versions must be unique")
        object.__setattr__(self, "_by_currency", by_currency)
        object.__setattr__(self, "_starts", {
            currency: [c.effective_from for c in cards] for currency, cards in by_currency.items()})

    @property
    def home_currency(self) -> str:
        """The first card's currency: what a price asked for without a wallet is in."""
        return self.cards[0].currency

    @property
    def currencies(self) -> tuple[str, ...]:
        return tuple(self._by_currency)

    def at(self, when: datetime, currency: str | None = None) -> RateCard:
        """The card of `currency` (default: the home currency) in effect at `when`."""
        currency = currency or self.home_currency
        cards = self._by_currency.get(currency, ())
        index = bisect_right(self._starts.get(currency, []), when) - 1
        if index < 0:
            raise LookupError(f"no rate card in {currency} in effect at {when.isoformat()}")
        return cards[index]

    def with_card(self, card: RateCard) -> RateCardBook:
        return RateCardBook((*self.cards, card))

    def estimate(self, spec: VmSpec, when: datetime, currency: str | None = None) -> Estimate:
        card = self.at(when, currency)
        return Estimate(
            rate_card_version=card.version,
            hourly=round_requirement(card.hourly_rate(spec), card.currency),
            monthly=round_requirement(card.monthly_price(spec), card.currency),
        )

    def monthly_requirement(self, spec: VmSpec, when: datetime,
                            currency: str | None = None) -> Money:
        """What must be available to provision (or the increase to resize) this VM."""
        card = self.at(when, currency)
        return round_requirement(card.monthly_price(spec), card.currency)


DEFAULT_RATE_CARD = RateCard(
    version="2025-01",
    effective_from=datetime(2025, 1, 1, tzinfo=UTC),
    currency="ZAR",
    tier_monthly_minor={"small": 15_000, "medium": 30_000, "large": 60_000, "enterprise": 120_000},
    vcpu_hour=Fraction(12),  # R0.12 per vCPU-hour
    ram_gb_hour=Fraction(4),  # R0.04 per GB-RAM-hour
    disk_gb_hour=Fraction(1, 50),  # R0.0002 per GB-disk-hour (about R0.15 per GB-month)
)

DEFAULT_BOOK = RateCardBook((DEFAULT_RATE_CARD,))


def tier_spec(tier: TierName, disk_gb: int = 50) -> VmSpec:
    from shared.contracts.vm import VmSpec

    return VmSpec.of_tier(tier, disk_gb)


def rate_card_of(document: dict[str, object]) -> RateCard:
    """A card from JSON: `version`, `effective_from` (ISO, with an offset), `currency`,
    `tier_monthly_minor` ({tier: minor units a month}) and the custom-size rates `vcpu_hour`,
    `ram_gb_hour`, `disk_gb_hour` in minor units, exact fractions written "9/2" or "12"."""
    tiers = document["tier_monthly_minor"]
    if not isinstance(tiers, dict):
        raise ValueError("tier_monthly_minor must be an object")
    effective = datetime.fromisoformat(str(document["effective_from"]))
    if effective.tzinfo is None:
        raise ValueError("effective_from needs a UTC offset")
    return RateCard(version=str(document["version"]), effective_from=effective.astimezone(UTC),
                    currency=str(document["currency"]),
                    tier_monthly_minor={str(k): int(v) for k, v in tiers.items()},
                    vcpu_hour=Fraction(str(document["vcpu_hour"])),
                    ram_gb_hour=Fraction(str(document["ram_gb_hour"])),
                    disk_gb_hour=Fraction(str(document["disk_gb_hour"])))


def book_with(extra_cards: str) -> RateCardBook:
    """The default book and the cards of `RATE_CARDS` (a JSON list, see `rate_card_of`), in
    the order they take effect within each currency: later ZAR versions, and the versions of
    other currencies (a wallet in a currency with no card has no price). Empty: the default
    book."""
    book = DEFAULT_BOOK
    for document in json.loads(extra_cards) if extra_cards.strip() else []:
        book = book.with_card(rate_card_of(document))
    return book
