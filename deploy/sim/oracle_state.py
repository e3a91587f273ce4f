"""The oracle's state: wallets, holds, VMs as metering and billing see them, month totals,
and what the services must report. Standard library only, like the oracle."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from deploy.sim.scenario import Company, Size

# --- state ------------------------------------------------------------------------------------

@dataclass
class Hold:
    vm: str
    remaining: int
    open: bool = True


@dataclass
class Wallet:
    company: Company
    balance: int = 0
    held: int = 0
    holds: list[Hold] = field(default_factory=list)
    low: bool = False
    depleted: bool = False
    auto_top_up_on: bool = False
    suspended_since: datetime | None = None  # provisioning's suspension for funds

    @property
    def available(self) -> int:
        credit = self.company.credit_limit if self.company.billing_mode == "INVOICE" else 0
        return self.balance + credit - self.held

    @property
    def trigger(self) -> int:
        auto = self.company.auto_top_up
        return auto.threshold if auto and self.auto_top_up_on else 0


@dataclass
class Vm:
    key: str
    ticker: str
    size: Size
    created_at: datetime
    # events not metered yet (time, same-instant order, kind, size)
    events: list[tuple[datetime, int, str, Size | None]] = field(default_factory=list)
    running: bool = False  # as metering sees it after the last closed hour
    current: Size | None = None
    deleted: bool = False  # as metering sees it: nothing may follow a deletion
    gone: bool = False  # deleted (or deleting)
    suspended_for_funds: bool = False
    # billing per month: rated, cap, charged; per hour: seconds, rated, line amount
    months: dict[date, list[int]] = field(default_factory=dict)
    hours: dict[datetime, tuple[int, int, int]] = field(default_factory=dict)

    def add(self, at: datetime, kind: str, size: Size | None = None) -> None:
        order = {"created": 0, "resized": 1, "off": 2, "on": 3, "deleted": 4}[kind]
        self.events.append((at, order, kind, size))


@dataclass
class MonthTotals:
    charges: int = 0
    top_ups: int = 0
    refunds: int = 0


@dataclass
class Expected:
    """What the services must report."""

    balances: dict[str, int]
    statements: dict[tuple[str, date], dict[str, int]]
    vm_months: dict[tuple[str, date], dict[str, int]]  # (vm key, month): metered/billed/amount
    invoices: dict[tuple[str, date], int]  # total with VAT
    requests: dict[tuple[datetime, str], str]  # (at, vm key): succeeded | rejected
    refunds: dict[tuple[datetime, str], str]  # (at, vm key): applied | refused | skipped
    suspensions: list[tuple[str, datetime]]
    top_ups: list[tuple[str, datetime, int, str]]  # ticker, at, amount, source
    fleet: dict[tuple[str, date], int]  # VMs alive at the start of each day
    daily_balance: dict[str, list[tuple[datetime, int]]]
    usage_events: int
    usage_by_day: dict[date, int]  # usage events of the day ending on that date
