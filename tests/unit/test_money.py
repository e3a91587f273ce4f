import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.money import CurrencyMismatch, Money, MoneyModel


def test_money_is_integer_minor_units():
    with pytest.raises(TypeError):
        Money(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money(True)  # type: ignore[arg-type]
    assert Money.of_major(150).amount == 15_000


def test_unknown_currency_is_refused():
    with pytest.raises(ValueError, match="unsupported currency"):
        Money(1, "XYZ")


def test_arithmetic_refuses_mixed_currencies():
    with pytest.raises(CurrencyMismatch):
        Money(1, "ZAR") + Money(1, "USD")
    with pytest.raises(CurrencyMismatch):
        _ = Money(1, "ZAR") < Money(1, "USD")


@pytest.mark.parametrize(("amount", "text"), [
    (0, "R0.00"), (5, "R0.05"), (123_456, "R1,234.56"), (-500, "-R5.00"),
])
def test_format(amount, text):
    assert Money(amount).format() == text


def test_wire_form_rejects_floats_and_strings():
    with pytest.raises(ValidationError):
        MoneyModel(amount_minor=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        MoneyModel.model_validate_json('{"amount_minor": "100", "currency": "ZAR"}')
    with pytest.raises(ValidationError):
        MoneyModel(amount_minor=1, currency="ZZZ")
    assert MoneyModel.of(Money(42, "USD")).to_money() == Money(42, "USD")


@given(st.integers(-10**12, 10**12), st.integers(-10**12, 10**12))
def test_addition_and_subtraction_are_exact(a, b):
    assert (Money(a) + Money(b)).amount == a + b
    assert (Money(a) - Money(b)) + Money(b) == Money(a)
    assert (Money(a) < Money(b)) == (a < b)
