"""The portal's pure core: money as written on a page, runway in words, warnings, periods,
a statement's running balance and amounts typed by people."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from services.portal import domain


def status(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "currency": "ZAR", "status": "active", "depleted": False, "low_balance": False,
        "low_balance_threshold_minor": 10_000, "billing_mode": "PAYG",
        "credit_limit_minor": 0, "balance_minor": 50_000, "held_minor": 0}
    return {**base, **changes}


def test_money_is_written_from_minor_units():
    assert domain.money(60_000, "ZAR") == "R600.00"
    assert domain.money(123_456_789, "ZAR") == "R1,234,567.89"
    assert domain.money(-41_250, "ZAR") == "-R412.50"
    assert domain.money(5, "USD") == "USD 0.05"


@pytest.mark.parametrize(("hours", "burn", "text"), [
    (None, 0, "no usage in the last 24 hours"),
    (500.0, 0, "no usage in the last 24 hours"),
    (0.0, 10, "no funds left at the current rate"),
    (0.5, 10, "less than an hour left at the current rate"),
    (1.2, 10, "about 1 hour left at the current rate"),
    (30.0, 10, "about 30 hours left at the current rate"),
    (144.0, 10, "about 6 days left at the current rate"),
])
def test_runway_in_words(hours, burn, text):
    assert domain.runway_text(hours, burn) == text


def test_no_warning_for_a_healthy_wallet():
    assert domain.warnings(status()) == []


def test_low_balance_and_depleted_warn_and_depleted_wins():
    low = domain.warnings(status(low_balance=True))
    assert [(w.level, w.text) for w in low] == [
        ("warning", "Low balance: available funds are below R100.00.")]
    depleted = domain.warnings(status(low_balance=True, depleted=True))
    assert [w.level for w in depleted] == ["danger"]
    assert "depleted" in depleted[0].text


def test_suspended_comes_first():
    found = domain.warnings(status(status="suspended", low_balance=True))
    assert found[0].level == "danger" and "suspended" in found[0].text


def test_an_invoice_customer_near_its_credit_limit_is_warned():
    near = status(billing_mode="INVOICE", credit_limit_minor=100_000, balance_minor=-70_000,
                  held_minor=15_000)
    assert [w.text for w in domain.warnings(near)] == [
        "R850.00 of the R1,000.00 credit limit is used."]
    assert domain.warnings(status(billing_mode="INVOICE", credit_limit_minor=100_000,
                                  balance_minor=-10_000)) == []


def test_periods_from_a_month_or_days():
    november = domain.period_of("2026-11", None, None, date(2026, 12, 4))
    assert (november.start, november.end) == (datetime(2026, 11, 1, tzinfo=UTC),
                                              datetime(2026, 12, 1, tzinfo=UTC))
    assert november.label == "November 2026"
    december = domain.period_of(None, None, None, date(2026, 12, 4))
    assert december.end == datetime(2027, 1, 1, tzinfo=UTC)
    days = domain.period_of("2026-11", "2026-11-03", "2026-11-05", date(2026, 12, 4))
    assert (days.start, days.end) == (datetime(2026, 11, 3, tzinfo=UTC),
                                      datetime(2026, 11, 6, tzinfo=UTC))
    assert days.label == "2026-11-03 to 2026-11-05"


@pytest.mark.parametrize(("month", "first", "last"), [
    ("2026-13", None, None), ("nov", None, None), (None, "2026-11-05", "2026-11-03"),
    (None, "2024-01-01", "2026-01-01"), (None, "yesterday", None)])
def test_bad_periods_are_refused_in_words(month, first, last):
    with pytest.raises(domain.InvalidPeriod):
        domain.period_of(month, first, last, date(2026, 12, 4))


def test_running_balance_starts_at_the_opening_balance():
    entries = [{"entry_id": 1, "occurred_at": "t1", "kind": "top_up", "description": "in",
                "amount_minor": 75_000},
               {"entry_id": 2, "occurred_at": "t2", "kind": "usage_debit", "description": None,
                "amount_minor": -1_250}]
    lines = domain.running_balance(500, entries)
    assert [line.balance_after_minor for line in lines] == [75_500, 74_250]
    assert lines[1].description == ""
    assert domain.kind_name("top_up") == "top-up"
    assert domain.kind_name("usage_debit") == "usage"


def test_the_shortfall_message_names_need_and_availability():
    assert domain.insufficient(60_000, 41_250)
    assert not domain.insufficient(60_000, 60_000)
    assert domain.shortfall_message(60_000, 41_250, "ZAR") == (
        "This VM needs R600.00 for its first month; R412.50 is available.")
    assert domain.shortfall_message(60_000, -5_000, "ZAR").endswith("R0.00 is available.")


@pytest.mark.parametrize(("text", "minor"), [
    ("250", 25_000), ("250.5", 25_050), ("R1,250.50", 125_050), (" 0.01 ", 1), ("0", 0)])
def test_amounts_typed_by_people(text, minor):
    assert domain.parse_amount(text) == minor


@pytest.mark.parametrize("text", ["", "abc", "1.234", "-5", "1e3", "12.3.4"])
def test_amounts_that_are_not_amounts(text):
    with pytest.raises(domain.InvalidAmount):
        domain.parse_amount(text)


def test_a_resize_holds_only_the_increase():
    assert domain.resize_increase(120_000, 60_000) == 60_000
    assert domain.resize_increase(30_000, 60_000) == 0
    assert domain.resize_shortfall_message(60_000, 15_000, "ZAR") == (
        "This resize needs R600.00 more a month; R150.00 is available.")
