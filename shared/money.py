"""Money as integer minor units with an ISO 4217 currency code. Never floats."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt

# Minor units per major unit. Currencies we bill in all have two decimals.
MINOR_UNITS = {"ZAR": 100, "USD": 100, "EUR": 100, "GBP": 100}

# The largest amount one charge, top-up, reservation or request may carry (R10 trillion):
# far beyond any real one, and small enough that balances summing millions of them stay
# inside PostgreSQL's bigint. Balances and totals are bounded by bigint alone.
MAX_AMOUNT_MINOR = 10**15
BIGINT_MAX = 2**63 - 1


def _known_currency(code: str) -> str:
    if code not in MINOR_UNITS:
        raise ValueError(f"unsupported currency {code!r}")
    return code


CurrencyCode = Annotated[str, Field(min_length=3, max_length=3), AfterValidator(_known_currency)]


class CurrencyMismatch(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Money:
    amount: int
    currency: str = "ZAR"

    def __post_init__(self) -> None:
        if isinstance(self.amount, bool) or not isinstance(self.amount, int):
            raise TypeError("money amounts are integer minor units")
        _known_currency(self.currency)

    @classmethod
    def zero(cls, currency: str = "ZAR") -> Money:
        return cls(0, currency)

    @classmethod
    def of_major(cls, major: int, currency: str = "ZAR") -> Money:
        return cls(major * MINOR_UNITS[currency], currency)

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise CurrencyMismatch(f"{self.currency} vs {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount - other.amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount < other.amount

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.amount <= other.amount

    def __gt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount > other.amount

    def __ge__(self, other: Money) -> bool:
        self._same(other)
        return self.amount >= other.amount

    def format(self) -> str:
        """Human form, e.g. ``R1,234.50`` for ZAR."""
        units = MINOR_UNITS[self.currency]
        sign = "-" if self.amount < 0 else ""
        major, minor = divmod(abs(self.amount), units)
        symbol = "R" if self.currency == "ZAR" else f"{self.currency} "
        return f"{sign}{symbol}{major:,}.{minor:02d}"


class MoneyModel(BaseModel):
    """Wire form of money in the contracts."""

    model_config = ConfigDict(frozen=True)

    # A balance or a total is stored (or summed) as a bigint.
    amount_minor: StrictInt = Field(ge=-BIGINT_MAX, le=BIGINT_MAX)
    currency: CurrencyCode = "ZAR"

    def to_money(self) -> Money:
        return Money(self.amount_minor, self.currency)

    @classmethod
    def of(cls, money: Money) -> MoneyModel:
        return cls(amount_minor=money.amount, currency=money.currency)


def _an_amount(money: MoneyModel) -> MoneyModel:
    if abs(money.amount_minor) > MAX_AMOUNT_MINOR:
        raise ValueError(f"amount must be at most {MAX_AMOUNT_MINOR} minor units")
    return money


# Money one message asks to move (a charge, a top-up, a reservation), not a balance or total.
AmountModel = Annotated[MoneyModel, AfterValidator(_an_amount), Field(
    description=f"An amount to move: at most {MAX_AMOUNT_MINOR} minor units either way.")]
