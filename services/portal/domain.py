"""What the portal shows, computed from what the services answer. Pure: no I/O.

Money stays integer minor units with its currency until the moment it is written on a
page; burn rate, runway and warnings are read off the wallet's status; a statement's
running balance is its opening balance plus each entry in order.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from shared.money import Money

HOURS_PER_MONTH = 730  # the rate card's month: 365 * 24 / 12


def money(amount_minor: int, currency: str) -> str:
    """`R1,234.50` for ZAR; other currencies carry their code."""
    return Money(amount_minor, currency).format()


def runway_text(runway_hours: float | None, burn_rate_per_hour_minor: int) -> str:
    """How long the available funds last at the current rate, in words a customer reads."""
    if burn_rate_per_hour_minor <= 0 or runway_hours is None:
        return "no usage in the last 24 hours"
    if runway_hours <= 0:
        return "no funds left at the current rate"
    if runway_hours < 1:
        return "less than an hour left at the current rate"
    if runway_hours < 48:
        hours = round(runway_hours)
        return f"about {hours} hour{'s' if hours != 1 else ''} left at the current rate"
    days = round(runway_hours / 24)
    return f"about {days} days left at the current rate"


@dataclass(frozen=True)
class Warning:
    level: str  # "danger" or "warning": how the page colours it
    text: str


def warnings(status: dict[str, Any]) -> list[Warning]:
    """What a wallet's status should make its owner act on, most urgent first."""
    currency = status["currency"]
    found: list[Warning] = []
    if status["status"] == "suspended":
        found.append(Warning("danger", "This wallet is suspended: new VMs are refused."))
    if status["depleted"]:
        found.append(Warning("danger", "Funds are depleted: running VMs are suspended "
                                       "until the wallet is topped up."))
    elif status["low_balance"]:
        found.append(Warning("warning", "Low balance: available funds are below "
                             f"{money(status['low_balance_threshold_minor'], currency)}."))
    limit = status["credit_limit_minor"]
    if status["billing_mode"] == "INVOICE" and limit > 0 and not status["depleted"]:
        used = max(0, -status["balance_minor"] + status["held_minor"])
        if used * 100 >= limit * 80:
            found.append(Warning("warning", f"{money(used, currency)} of the "
                                 f"{money(limit, currency)} credit limit is used."))
    return found


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime  # exclusive

    @property
    def label(self) -> str:
        last = self.end - timedelta(seconds=1)
        if (self.start.day == 1 and self.start.time() == datetime.min.time()
                and self.end == _next_month(self.start)):
            return self.start.strftime("%B %Y")
        return f"{self.start:%Y-%m-%d} to {last:%Y-%m-%d}"


class InvalidPeriod(ValueError):
    pass


def _next_month(start: datetime) -> datetime:
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


def month_period(month: str) -> Period:
    """`2026-11` -> [2026-11-01, 2026-12-01) in UTC."""
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidPeriod("a month is written YYYY-MM, e.g. 2026-11") from None
    return Period(start, _next_month(start))


def day_period(first: str, last: str) -> Period:
    """From the start of `first` to the end of `last` (both YYYY-MM-DD, inclusive)."""
    try:
        start = datetime.combine(date.fromisoformat(first), datetime.min.time(), UTC)
        end = datetime.combine(date.fromisoformat(last), datetime.min.time(), UTC)
    except ValueError:
        raise InvalidPeriod("dates are written YYYY-MM-DD, e.g. 2026-11-30") from None
    end += timedelta(days=1)
    if end <= start:
        raise InvalidPeriod("the period must end on or after the day it starts")
    if end - start > timedelta(days=400):
        raise InvalidPeriod("a statement covers at most 400 days")
    return Period(start, end)


def period_of(month: str | None, first: str | None, last: str | None,
              today: date) -> Period:
    """The period a statement form asks for: from/to days, else a month, else this month."""
    if first or last:
        return day_period(first or last or "", last or first or "")
    if month:
        return month_period(month)
    return month_period(f"{today:%Y-%m}")


def month_days(month: str) -> int:
    start = month_period(month).start
    return calendar.monthrange(start.year, start.month)[1]


@dataclass(frozen=True)
class StatementLine:
    entry_id: int
    occurred_at: str
    kind: str
    description: str
    amount_minor: int
    balance_after_minor: int


def running_balance(opening_minor: int, entries: list[dict[str, Any]]) -> list[StatementLine]:
    """Each entry with the balance after it, in the statement's order."""
    balance = opening_minor
    lines = []
    for e in entries:
        balance += e["amount_minor"]
        lines.append(StatementLine(e["entry_id"], e["occurred_at"], e["kind"],
                                   e["description"] or "", e["amount_minor"], balance))
    return lines


KIND_NAMES = {"top_up": "top-up", "usage_debit": "usage", "usage_credit": "usage credit",
              "refund": "refund", "adjustment": "adjustment"}


def kind_name(kind: str) -> str:
    return KIND_NAMES.get(kind, kind.replace("_", " "))


def shortfall_message(needed_minor: int, available_minor: int, currency: str) -> str:
    """The refusal a customer reads when a VM's first month is more than the wallet has."""
    return (f"This VM needs {money(needed_minor, currency)} for its first month; "
            f"{money(max(available_minor, 0), currency)} is available.")


def insufficient(needed_minor: int, available_minor: int) -> bool:
    return needed_minor > available_minor


class InvalidAmount(ValueError):
    pass


def parse_amount(text: str) -> int:
    """What a customer types ("150", "R1,250.50") as minor units; never through a float."""
    cleaned = text.strip().removeprefix("R").replace(",", "").replace(" ", "")
    whole, _, cents = cleaned.partition(".")
    if not whole.isdigit() or (cents and (not cents.isdigit() or len(cents) > 2)):
        raise InvalidAmount(f"{text.strip() or 'an empty amount'} is not an amount "
                            "in rands and cents, e.g. 250.00")
    return int(whole) * 100 + int(cents.ljust(2, "0") or 0)


def resize_increase(new_monthly_minor: int, current_monthly_minor: int) -> int:
    """What a resize holds: the monthly price increase, nothing for a smaller size."""
    return max(0, new_monthly_minor - current_monthly_minor)


def resize_shortfall_message(increase_minor: int, available_minor: int, currency: str) -> str:
    return (f"This resize needs {money(increase_minor, currency)} more a month; "
            f"{money(max(available_minor, 0), currency)} is available.")
