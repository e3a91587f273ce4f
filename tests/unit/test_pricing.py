from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.contracts.vm import VmSpec
from shared.money import Money
from shared.pricing import (
    DEFAULT_BOOK,
    DEFAULT_RATE_CARD,
    RateCard,
    RateCardBook,
    round_charge,
    round_requirement,
    tier_spec,
)

START = DEFAULT_RATE_CARD.effective_from


def card(version: str, at: datetime, small: int = 15_000, currency: str = "ZAR") -> RateCard:
    return RateCard(version, at, currency, {"small": small, "medium": 30_000, "large": 60_000,
                                         "enterprise": 120_000}, Fraction(12), Fraction(4),
                    Fraction(1, 50))


@pytest.mark.parametrize("tier, monthly", [("small", 15_000), ("medium", 30_000),
                                           ("large", 60_000), ("enterprise", 120_000)])
def test_tier_prices_are_the_seed_price_list(tier, monthly):
    spec = tier_spec(tier)
    assert DEFAULT_RATE_CARD.monthly_price(spec) == monthly
    assert DEFAULT_RATE_CARD.hourly_rate(spec) == Fraction(monthly, 730)


def test_custom_sizes_are_priced_per_resource_hour():
    spec = VmSpec(vcpu=3, ram_gb=5, disk_gb=100)
    assert DEFAULT_RATE_CARD.hourly_rate(spec) == 3 * 12 + 5 * 4 + Fraction(100, 50)
    assert DEFAULT_RATE_CARD.monthly_price(spec) == 58 * 730


def test_exact_charge_prorates_by_seconds_and_refuses_negative_time():
    spec = tier_spec("medium")
    assert DEFAULT_RATE_CARD.exact_charge(spec, 1800) == Fraction(30_000, 730) / 2
    assert DEFAULT_RATE_CARD.exact_charge(spec, 0) == 0
    with pytest.raises(ValueError):
        DEFAULT_RATE_CARD.exact_charge(spec, -1)


def test_charges_round_down_and_requirements_round_up():
    assert round_charge(Fraction(4109, 100), "ZAR") == Money(41)
    assert round_requirement(Fraction(4101, 100), "ZAR") == Money(42)
    assert round_charge(Fraction(41), "ZAR") == round_requirement(Fraction(41), "ZAR") == Money(41)


@given(st.fractions(min_value=0, max_value=10**9))
def test_rounding_never_moves_more_than_a_cent_and_brackets_the_exact_amount(exact):
    down, up = round_charge(exact, "ZAR").amount, round_requirement(exact, "ZAR").amount
    assert down <= exact <= up and up - down <= 1


def test_estimates_round_up_so_a_hold_covers_a_month():
    estimate = DEFAULT_BOOK.estimate(tier_spec("medium"), START)
    assert estimate.rate_card_version == "2025-01"
    assert estimate.hourly == Money(42)  # 41.09...
    assert estimate.monthly == Money(30_000)
    custom = VmSpec(vcpu=1, ram_gb=1, disk_gb=11)
    # (12 + 4 + 11/50) cents an hour x 730 = 11,840.6: rounded up
    assert DEFAULT_BOOK.monthly_requirement(custom, START) == Money(11_841)


def test_the_book_picks_the_card_in_effect():
    later = START + timedelta(days=40)
    book = DEFAULT_BOOK.with_card(card("v2", later, small=18_000))
    assert book.at(later - timedelta(microseconds=1)).version == "2025-01"
    assert book.at(later).version == "v2"
    assert book.monthly_requirement(tier_spec("small"), later) == Money(18_000)
    with pytest.raises(LookupError):
        book.at(START - timedelta(seconds=1))


def test_a_book_needs_cards_in_strictly_increasing_order():
    with pytest.raises(ValueError):
        RateCardBook(())
    with pytest.raises(ValueError):
        RateCardBook((card("b", START + timedelta(days=1)), card("a", START)))
    with pytest.raises(ValueError):
        RateCardBook((card("a", START), card("b", START)))


def test_each_currency_has_its_own_cards_and_none_is_ever_converted():
    usd_from = START + timedelta(days=90)
    book = DEFAULT_BOOK.with_card(card("usd-1", usd_from, small=1_000, currency="USD")) \
        .with_card(card("zar-2", START + timedelta(days=30), small=18_000))
    assert book.home_currency == "ZAR" and set(book.currencies) == {"ZAR", "USD"}
    later = usd_from + timedelta(days=1)
    assert book.at(later).version == "zar-2"  # no currency: the home currency
    assert book.at(later, "ZAR").version == "zar-2"
    assert book.at(later, "USD").version == "usd-1"
    assert book.monthly_requirement(tier_spec("small"), later, "USD") == Money(1_000, "USD")
    assert book.estimate(tier_spec("small"), later, "USD").hourly == Money(2, "USD")  # 1.37 up
    with pytest.raises(LookupError, match="no rate card in USD in effect"):
        book.at(usd_from - timedelta(microseconds=1), "USD")
    with pytest.raises(LookupError, match="no rate card in EUR"):
        book.at(later, "EUR")


def test_cards_are_ordered_within_their_currency_and_versions_are_unique():
    # a USD card may start before a later ZAR one, and at the same moment as a ZAR one
    book = RateCardBook((card("zar-1", START), card("zar-2", START + timedelta(days=9)),
                         card("usd-1", START, currency="USD")))
    assert book.at(START, "USD").version == "usd-1"
    with pytest.raises(ValueError, match="USD rate cards"):
        RateCardBook((card("zar-1", START),
                      card("usd-2", START + timedelta(days=9), currency="USD"),
                      card("usd-1", START, currency="USD")))
    with pytest.raises(ValueError, match="unique"):
        RateCardBook((card("v", START), card("v", START, currency="USD")))


def test_a_tier_must_have_its_shape():
    with pytest.raises(ValueError, match="tier small is 1 vCPU / 2 GB"):
        VmSpec(tier="small", vcpu=2, ram_gb=2)
    assert tier_spec("large", disk_gb=200) == VmSpec(tier="large", vcpu=4, ram_gb=8, disk_gb=200)
    assert datetime(2025, 1, 1, tzinfo=UTC) == START


def test_later_rate_cards_come_from_configuration():
    import json
    from datetime import UTC, datetime
    from fractions import Fraction

    import pytest

    from shared.pricing import DEFAULT_BOOK, book_with

    assert book_with("") is DEFAULT_BOOK
    book = book_with(json.dumps([{
        "version": "2026-10", "effective_from": "2026-10-01T00:00:00+00:00", "currency": "ZAR",
        "tier_monthly_minor": {"small": 16_500, "medium": 33_000, "large": 66_000,
                               "enterprise": 132_000},
        "vcpu_hour": "13", "ram_gb_hour": "9/2", "disk_gb_hour": "1/50"}]))
    assert book.at(datetime(2026, 9, 30, 23, tzinfo=UTC)).version == DEFAULT_BOOK.cards[0].version
    october = book.at(datetime(2026, 10, 1, tzinfo=UTC))
    assert october.tier_monthly_minor["medium"] == 33_000
    assert october.ram_gb_hour == Fraction(9, 2)
    with pytest.raises(ValueError):
        book_with(json.dumps([{**json.loads(json.dumps({
            "version": "x", "effective_from": "2026-10-01T00:00:00", "currency": "ZAR",
            "tier_monthly_minor": {}, "vcpu_hour": "1", "ram_gb_hour": "1",
            "disk_gb_hour": "1"}))}]))
