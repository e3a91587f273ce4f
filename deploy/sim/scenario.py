"""The seeded scenario: which companies, their wallets and habits, and every action they take
over the run, in event time. Pure data and arithmetic (standard library only), so the
independent oracle can read the same scenario the driver plays through the services.

Time runs in sync points, one a day at 00:00 UTC: the driver moves the clock to each, waits
until the system is quiet, then the companies act (top-ups, refunds, VM requests, resizes,
deletes), and their customers power VMs on and off in their industry's rhythm until the next.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

COMPANIES_FILE = Path(__file__).with_name("jse_companies.csv")
SYNC = timedelta(days=1)
POWER_OFFSET = timedelta(minutes=15)  # customers act a quarter past the hour

TIER_SHAPES = {"small": (1, 2), "medium": (2, 4), "large": (4, 8), "enterprise": (8, 16)}
TIERS = tuple(TIER_SHAPES)

# How each JSE sector behaves (profile), from the JSE's (ICB) sector names.
PROFILE_OF_SECTOR = {
    "Banks": "banking",
    "Investment Banking and Brokerage Services": "banking",
    "Finance and Credit Services": "banking",
    "Closed End Investments": "banking",
    "Life Insurance": "insurance",
    "Non-life Insurance": "insurance",
    "Telecommunications Service Providers": "telecoms",
    "Health Care Providers": "healthcare",
    "Pharmaceuticals and Biotechnology": "healthcare",
    "Industrial Metals and Mining": "mining",
    "Precious Metals and Mining": "mining",
    "Coal": "mining",
    "Retailers": "retail",
    "Personal Care Drug and Grocery Stores": "retail",
    "Travel and Leisure": "retail",
    "Software and Computer Services": "technology",
    "Technology Hardware and Equipment": "technology",
    "Media": "technology",
    "Real Estate Investment Trusts": "property",
}
DEFAULT_PROFILE = "industrial"  # chemicals, materials, food, industrials, services
PROFILES = ("banking", "telecoms", "insurance", "healthcare", "mining", "retail",
            "technology", "industrial", "property")


@dataclass(frozen=True)
class Size:
    """A tier, or a custom size (tier None) in vCPU, GB RAM and GB disk."""

    tier: str | None
    vcpu: int
    ram_gb: int
    disk_gb: int = 50

    @classmethod
    def of_tier(cls, tier: str) -> Size:
        vcpu, ram = TIER_SHAPES[tier]
        return cls(tier, vcpu, ram)

    def label(self) -> str:
        return self.tier or f"custom {self.vcpu}/{self.ram_gb}/{self.disk_gb}"

    def body(self) -> dict[str, object]:
        if self.tier:
            return {"tier": self.tier}
        return {"vcpu": self.vcpu, "ram_gb": self.ram_gb, "disk_gb": self.disk_gb}


@dataclass(frozen=True)
class AutoTopUpHabit:
    threshold: int
    amount: int
    card_token: str  # tok_decline... cards are declined by the simulated gateway


@dataclass(frozen=True)
class Company:
    ticker: str
    name: str
    industry: str
    sector: str
    profile: str
    billing_mode: str  # PAYG or INVOICE
    credit_limit: int
    opening_top_up: int
    base_fleet: int
    growth: float  # fleet growth over the run (banking, telecoms, technology)
    kind: str = "customer"
    reseller: str | None = None  # the reseller's ticker
    auto_top_up: AutoTopUpHabit | None = None
    # A wallet that runs dry: once suspended for this many days it tops up this much.
    late_top_up_after_days: int | None = None
    late_top_up: int = 0
    pays_invoices: bool = False  # INVOICE: pays last month's charges on the 3rd
    currency: str = "ZAR"  # the wallet's; amounts above are in its minor units


@dataclass(frozen=True)
class Action:
    """Something a company does at a sync point, through the services' HTTP APIs."""

    at: datetime
    ticker: str
    kind: str  # top_up | refund | request | resize | delete
    vm: str = ""  # the VM's key in the scenario
    size: Size | None = None
    amount: int = 0  # top_up
    percent: int = 0  # refund: this share of the VM hour's charge
    hour: datetime | None = None  # refund: the VM hour whose charge is refunded


@dataclass
class Scenario:
    seed: int
    start: datetime
    days: int
    companies: list[Company]
    actions: dict[datetime, list[Action]] = field(default_factory=dict)
    commodity: dict[date, float] = field(default_factory=dict)  # mining's price, per day
    # rate card versions after the default one (the services load them from RATE_CARDS)
    rate_cards: list[dict[str, object]] = field(default_factory=list)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)

    def sync_points(self) -> list[datetime]:
        return [self.start + i * SYNC for i in range(self.days + 1)]

    def company(self, ticker: str) -> Company:
        return next(c for c in self.companies if c.ticker == ticker)

    def months(self) -> list[date]:
        """Every calendar month the run closes (ends within the run)."""
        months, month = [], date(self.start.year, self.start.month, 1)
        while month_end(month) <= self.end:
            months.append(month)
            month = next_month(month)
        return months


def rate_card_change(start: datetime, days: int) -> list[dict[str, object]]:
    """The rate card version that takes effect within the run: prices up by a tenth, from
    the first month start after the middle of the run (or the middle itself, in a run that
    starts no month). JSON as the services read it (`RATE_CARDS`, shared.pricing)."""
    middle = start + timedelta(days=days / 2)
    first = datetime(middle.year, middle.month, 1, tzinfo=UTC)
    at = month_end(month_of(middle)) if first < middle else first
    if not start < at < start + timedelta(days=days):
        at = datetime(middle.year, middle.month, middle.day, tzinfo=UTC)
    return [{"version": f"{at:%Y-%m}-sim", "effective_from": at.isoformat(),
             "currency": "ZAR",
             "tier_monthly_minor": {"small": 16_500, "medium": 33_000, "large": 66_000,
                                    "enterprise": 132_000},
             "vcpu_hour": "13", "ram_gb_hour": "9/2", "disk_gb_hour": "1/50"}]


# Companies that report in US dollars (their offshore operations) and so keep a USD wallet:
# Anglo American (mining) and Datatec (a reseller), both in every size of run.
USD_WALLETS = ("AGL", "DTC")
# A month of a Large VM in each currency: what a company's amounts are scaled by.
LARGE_MONTHLY = {"ZAR": 60_000, "USD": 3_600}


def usd_rate_card(start: datetime, days: int) -> dict[str, object]:
    """The first USD rate card: it takes effect an eighth into the run (at least a day in,
    at a sync point), so a USD wallet opens before there is a price in USD. JSON as the
    services read it (`RATE_CARDS`, shared.pricing)."""
    at = start + timedelta(days=max(1, days // 8))
    return {"version": f"usd-{at:%Y-%m-%d}-sim", "effective_from": at.isoformat(),
            "currency": "USD",
            "tier_monthly_minor": {"small": 900, "medium": 1_800, "large": 3_600,
                                   "enterprise": 7_200},
            "vcpu_hour": "2/3", "ram_gb_hour": "2/9", "disk_gb_hour": "1/900"}


def rate_cards_of_run(start: datetime, days: int) -> list[dict[str, object]]:
    """Every rate card version a run adds to the default one: the ZAR change within the run
    and the USD card."""
    return [*rate_card_change(start, days), usd_rate_card(start, days)]


def card_start(scenario: Scenario, currency: str) -> datetime | None:
    """When the scenario's first card in `currency` takes effect; None: the default (ZAR)."""
    starts = [datetime.fromisoformat(str(c["effective_from"])) for c in scenario.rate_cards
              if c["currency"] == currency]
    return None if currency == "ZAR" or not starts else min(starts)


def ticker_of(vm_key: str) -> str:
    """The company of a scenario VM key (`<ticker>-<n>`)."""
    return vm_key.rsplit("-", 1)[0].upper()


def month_of(at: datetime) -> date:
    return date(at.year, at.month, 1)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def month_end(month: date) -> datetime:
    following = next_month(month)
    return datetime(following.year, following.month, 1, tzinfo=UTC)


# --- industry rhythms: is a VM of this profile running at `at`? ---------------------------

def _hours(start: int, end: int, weekdays_only: bool = False) -> Callable[[datetime], bool]:
    def on(at: datetime) -> bool:
        return start <= at.hour < end and not (weekdays_only and at.weekday() >= 5)
    return on


RHYTHMS: dict[str, Callable[[datetime], bool]] = {
    "banking": lambda at: True,  # 24/7
    "telecoms": lambda at: True,
    "technology": lambda at: True,
    "mining": lambda at: True,  # 24/7 operations; the fleet follows the commodity price
    "healthcare": _hours(6, 20),
    "retail": _hours(8, 22),
    "insurance": _hours(7, 19, weekdays_only=True),
    "industrial": _hours(6, 18, weekdays_only=True),
    "property": _hours(8, 17, weekdays_only=True),
}


def running_wanted(profile: str, at: datetime) -> bool:
    """Whether a customer of this profile wants its VMs running in the hour of `at`."""
    return RHYTHMS[profile](at)


def black_friday(year: int) -> date:
    """The last Friday of November."""
    day = date(year, 11, 30)
    return day - timedelta(days=(day.weekday() - 4) % 7)


def fleet_target(company: Company, day: date, progress: float, price: float) -> int:
    """How many VMs the company wants on `day` (progress: 0 at the start, 1 at the end)."""
    base = company.base_fleet
    match company.profile:
        case "banking" | "telecoms" | "technology":
            return base + math.floor(base * company.growth * progress)
        case "healthcare":  # the southern-hemisphere winter, May to August
            return base + (math.ceil(base / 2) if 5 <= day.month <= 8 else 0)
        case "mining":  # the fleet follows the commodity price (see mining_target)
            return max(1, round(base * price))
        case "retail":  # Black Friday to the end of December
            return base * 2 if day >= black_friday(day.year) and day.month >= 11 else base
    return base


def mining_target(company: Company, current: int, price: float) -> int:
    """The fleet follows the price, with a margin so it does not flap around a boundary:
    one more VM once the price would carry 0.7 of one more, one less at 0.7 below."""
    wanted = company.base_fleet * price
    if wanted >= current + 0.7:
        return current + 1
    if wanted <= current - 0.7 and current > 1:
        return current - 1
    return current


# --- the generator --------------------------------------------------------------------------

def load_companies(path: Path = COMPANIES_FILE) -> list[tuple[str, str, str, str]]:
    with path.open(newline="") as f:
        return [(r["ticker"], r["name"], r["industry"], r["sector"]) for r in csv.DictReader(f)]


def pick(rows: list[tuple[str, str, str, str]], count: int) -> list[tuple[str, str, str, str]]:
    """`count` companies spread over every profile (round robin), all of them if count is
    larger than the file. The two resellers (Datatec, Altron) come first when picked."""
    by_profile: dict[str, list[tuple[str, str, str, str]]] = {}
    for row in rows:
        by_profile.setdefault(PROFILE_OF_SECTOR.get(row[3], DEFAULT_PROFILE), []).append(row)
    for rows_of_profile in by_profile.values():
        rows_of_profile.sort(key=lambda r: r[0] not in RESELLERS)  # stable: file order
    chosen: list[tuple[str, str, str, str]] = []
    while len(chosen) < min(count, len(rows)):
        for profile in PROFILES:
            if by_profile.get(profile) and len(chosen) < count:
                chosen.append(by_profile[profile].pop(0))
    return chosen


RESELLERS = ("DTC", "AEL")  # Datatec and Altron resell cloud services


def generate(seed: int, start: datetime, days: int, companies: int) -> Scenario:
    rng = random.Random(seed)
    rows = pick(load_companies(), companies)
    scenario = Scenario(seed, start, days, [])
    scenario.commodity = commodity_series(rng, start.date(), days)
    scenario.rate_cards = rate_cards_of_run(start, days)
    resellers = [r[0] for r in rows if r[0] in RESELLERS]
    for index, (ticker, name, industry, sector) in enumerate(rows):
        profile = PROFILE_OF_SECTOR.get(sector, DEFAULT_PROFILE)
        scenario.companies.append(_company(rng, index, ticker, name, industry, sector, profile,
                                           resellers))
    _plan_actions(rng, scenario)
    return scenario


def _company(rng: random.Random, index: int, ticker: str, name: str, industry: str,
             sector: str, profile: str, resellers: list[str]) -> Company:
    base_fleet = rng.choice((1, 2, 2, 3, 3, 4, 5))
    invoice = profile in ("banking", "telecoms", "insurance") and rng.random() < 0.7
    role = index % 10  # spreads the scenario's special cases over every size of run
    kind = "reseller" if ticker in resellers else "customer"
    reseller = None
    if kind == "customer" and resellers and role in (3, 7):
        reseller = resellers[index % len(resellers)]
    currency = "USD" if ticker in USD_WALLETS else "ZAR"
    large = LARGE_MONTHLY[currency]
    monthly = base_fleet * large  # about a month of Large VMs
    if invoice:
        return Company(ticker, name, industry, sector, profile, "INVOICE",
                       credit_limit=rng.choice((3, 4, 6)) * monthly, opening_top_up=0,
                       base_fleet=base_fleet, growth=rng.choice((0.2, 0.4, 0.6)), kind=kind,
                       reseller=reseller, pays_invoices=role != 5, currency=currency)
    auto = None
    late_after = None
    opening = rng.choice((2, 3, 4)) * monthly
    if role in (1, 4, 8):
        # Auto top-up: a trigger above about three days of the whole fleet's burn, and an
        # amount of about two months, so a top-up lands long before the funds could run out.
        token = "tok_decline_expired" if role == 8 else f"tok_visa_{ticker.lower()}"
        auto = AutoTopUpHabit(threshold=monthly // 2, amount=2 * monthly, card_token=token)
    if role in (2, 8):
        # Runs dry: funds for about one month, no top-up that works; once suspended it pays
        # late and comes back.
        opening = base_fleet * large // 2
        late_after = rng.choice((3, 5, 8))
    return Company(ticker, name, industry, sector, profile, "PAYG", credit_limit=0,
                   opening_top_up=opening, base_fleet=base_fleet,
                   growth=rng.choice((0.2, 0.4, 0.6)), kind=kind, reseller=reseller,
                   auto_top_up=auto, late_top_up_after_days=late_after,
                   late_top_up=4 * monthly if late_after else 0, currency=currency)


def commodity_series(rng: random.Random, first: date, days: int) -> dict[date, float]:
    """A commodity price relative to its starting level: a seeded random walk with drift
    that turns, so mining fleets both grow and shrink within the run."""
    price, series = 1.0, {}
    for day in range(days + 1):
        cycle = 0.004 * math.sin(2 * math.pi * day / 120)
        price *= math.exp(cycle + rng.gauss(0, 0.02))
        price = min(max(price, 0.4), 2.5)
        series[first + timedelta(days=day)] = round(price, 4)
    return series


def _tier_for(rng: random.Random, company: Company) -> Size:
    if rng.random() < 0.2:  # custom sizes, priced per vCPU, GB RAM and GB disk
        return Size(None, rng.choice((2, 4, 6)), rng.choice((4, 8, 16)), rng.choice((50, 200)))
    weights = {"banking": (1, 3, 4, 2), "telecoms": (1, 2, 4, 3), "mining": (1, 3, 4, 1)}
    return Size.of_tier(rng.choices(TIERS, weights=weights.get(company.profile,
                                                                (3, 4, 2, 1)))[0])


def _plan_actions(rng: random.Random, scenario: Scenario) -> None:
    """Fleet changes toward each day's target (one per company and day, after its first),
    some resizes, and incidents refunded (some over the 95% cap).

    A company whose wallet's currency has no card at the start (USD) asks for one VM on the
    first day, which must be refused for want of a price, and builds its fleet from the day
    its currency's card takes effect."""
    planned: dict[str, list[str]] = {c.ticker: [] for c in scenario.companies}
    sizes: dict[str, Size] = {}
    counter = 0
    for day_index, at in enumerate(scenario.sync_points()[:-1]):
        progress = day_index / max(scenario.days - 1, 1)
        price = scenario.commodity[at.date()]
        for company in scenario.companies:
            fleet = planned[company.ticker]
            priced_from = card_start(scenario, company.currency) or scenario.start
            if at < priced_from:
                if day_index == 0:
                    counter += 1
                    scenario.actions.setdefault(at, []).append(Action(
                        at, company.ticker, "request", f"{company.ticker.lower()}-{counter}",
                        Size.of_tier("small")))
                continue
            first = at == priced_from
            target = (mining_target(company, len(fleet), price)
                      if company.profile == "mining" and not first
                      else fleet_target(company, at.date(), progress, price))
            wanted = target - len(fleet) if first else min(target - len(fleet), 1)
            actions: list[Action] = []
            for _ in range(max(wanted, 0)):
                counter += 1
                key = f"{company.ticker.lower()}-{counter}"
                size = _tier_for(rng, company)
                if first and company.ticker in ("PAN", "ARL") and not fleet:
                    size = Size.of_tier("enterprise")  # more than the wallet can hold
                fleet.append(key)
                sizes[key] = size
                actions.append(Action(at, company.ticker, "request", key, size))
            if wanted < 0:
                key = fleet.pop()
                actions.append(Action(at, company.ticker, "delete", key))
            if not actions and fleet and day_index > 0 and rng.random() < 0.012:
                key = rng.choice(fleet)
                new = Size.of_tier(rng.choice([t for t in TIERS if t != sizes[key].tier]))
                sizes[key] = new
                actions.append(Action(at, company.ticker, "resize", key, new))
            if fleet and day_index >= 2 and rng.random() < 0.006:
                actions.append(Action(at, company.ticker, "refund", rng.choice(fleet),
                                      percent=rng.choice((30, 50, 99)),
                                      hour=at - timedelta(hours=12)))
            for action in actions:
                scenario.actions.setdefault(at, []).append(action)
