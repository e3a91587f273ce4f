"""Billing's rules, with no I/O: rating an hour, revisions, the monthly cap, months and VAT.

Amounts are integer minor units. Rates are exact fractions (shared/pricing.py); a billing
line's amount is rounded once, down, so rounding never costs the customer.

A VM's hour may be restated by metering with a higher revision. The state kept per VM and
calendar month (UTC) is the sum of the rated amounts of each hour's latest revision, the
cap (the highest monthly price of any size the VM ran at in that month), and what was
charged so far. Every new line charges `min(rated, cap) - charged`: so whatever the
arrival order, duplicates or corrections, the month's charges add up to exactly
`min(sum of the latest revisions' rated amounts, cap)`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from functools import lru_cache
from uuid import UUID

from shared.contracts.base import CONTRACTS_NAMESPACE, deterministic_id
from shared.contracts.metering import HourlyUsage
from shared.contracts.vm import VmSpec
from shared.money import Money
from shared.pricing import RateCard, RateCardBook

VAT_PERCENT = 15


class RatingError(ValueError):
    """Usage billing cannot rate; the message is the reason given in the dead letter."""


class UsageReused(ValueError):
    """A VM hour's revision billed before, now with other seconds: not billed, not a
    redelivery (a dead letter, no issue: what was billed stands and is right)."""


# --- auto top-up -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Attempt:
    """One auto top-up charge asked of the payment gateway for one low-balance event."""

    attempt_id: UUID  # the gateway's idempotency key
    wallet_id: UUID
    amount: Money
    card_token: str
    cause_id: UUID  # the WalletLowBalance that asked for it
    correlation_id: UUID
    occurred_at: datetime  # the low balance's event time, and so the top-up's


# --- months --------------------------------------------------------------------------------

def month_of(moment: datetime) -> date:
    """The calendar month (UTC) a moment falls in, as its first day."""
    utc = moment.astimezone(UTC)
    return date(utc.year, utc.month, 1)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def month_end(month: date) -> datetime:
    """The first instant after the month (UTC)."""
    following = next_month(month)
    return datetime(following.year, following.month, 1, tzinfo=UTC)


def month_label(month: date) -> str:
    return f"{month.year:04d}-{month.month:02d}"


def parse_month(label: str) -> date:
    """'YYYY-MM' -> first day of that month; ValueError on anything else."""
    if len(label) != 7 or label[4] != "-" or not (label[:4] + label[5:]).isdigit():
        raise ValueError(f"month must be YYYY-MM, got {label!r}")
    return date(int(label[:4]), int(label[5:]), 1)


def previous_month(month: date) -> date:
    return date(month.year - (month.month == 1), (month.month - 2) % 12 + 1, 1)


def last_complete_month(low_watermark: datetime) -> date:
    """The last month that ends at or before the low watermark."""
    return previous_month(month_of(low_watermark))


def months_to_close(closed_through: date | None, first_line_month: date | None,
                    low_watermark: datetime) -> list[date]:
    """Months that end at or before the low watermark and are not closed yet, oldest first.

    The first time, closing starts at the earliest month with a billing line, or at the
    last complete month when there is none (wallets with only top-ups get statements too)."""
    last = last_complete_month(low_watermark)
    if closed_through is not None:
        start = next_month(closed_through)
    else:
        start = first_line_month or last
    months: list[date] = []
    while start <= last:
        months.append(start)
        start = next_month(start)
    return months


def low_watermark(watermarks: dict[int, datetime], source_partitions: int) -> datetime | None:
    """Usage before this moment has all arrived: the lowest watermark over every source
    partition, or None while some source partition has not reported yet."""
    if any(p not in watermarks for p in range(source_partitions)):
        return None
    return min(watermarks[p] for p in range(source_partitions))


# --- rating --------------------------------------------------------------------------------

def item_code(spec: VmSpec) -> str:
    return f"VM-{spec.tier.upper()}" if spec.tier else "VM-CUSTOM"


def monthly_cap(card: RateCard, spec: VmSpec) -> int:
    """A size's monthly price as a cap, rounded down (in the customer's favour)."""
    return math.floor(card.monthly_price(spec))


@dataclass(frozen=True, slots=True)
class RatedHour:
    exact: Fraction  # sum of the segments' exact charges, minor units
    rated: int  # `exact` rounded down, once
    hour_cap: int  # highest monthly price of the sizes that ran this hour
    currency: str
    rate_card_version: str
    item_code: str  # the size with the highest monthly price this hour


def rate_hour(book: RateCardBook, usage: HourlyUsage, currency: str | None = None
              ) -> RatedHour:
    """Rate one hour with the card of the wallet's `currency` (default: the book's home
    currency) in effect at its start: each segment prorated by its seconds (tier price /
    hours_per_month, or per-resource price), summed exactly, then rounded down once."""
    return Rater(book).rate(usage, currency)


SegmentsKey = tuple[tuple[VmSpec, int], ...]


class Rater:
    """`rate_hour`, remembering the result per (card, segments): a fleet has few sizes."""

    MAX_CACHED = 50_000

    def __init__(self, book: RateCardBook) -> None:
        self.book = book
        self._cache: dict[tuple[str, tuple[tuple[object, ...], ...]], RatedHour] = {}

    def rate(self, usage: HourlyUsage, currency: str | None = None) -> RatedHour:
        utc = usage.hour_start.astimezone(UTC)
        if (utc.minute, utc.second, utc.microsecond) != (0, 0, 0):
            raise RatingError(f"hour_start {usage.hour_start.isoformat()} is not the start "
                              "of an hour")
        total = sum(s.seconds for s in usage.segments)
        if total != usage.seconds:
            raise RatingError(f"segments add up to {total} s but the usage says "
                              f"{usage.seconds} s")
        try:
            card = self.book.at(utc, currency)
        except LookupError as error:
            raise RatingError(str(error)) from None
        # plain tuples: hashing them is far cheaper than hashing the pydantic specs
        key = (card.version, tuple((s.spec.tier, s.spec.vcpu, s.spec.ram_gb, s.spec.disk_gb,
                                    s.seconds) for s in usage.segments))
        rated = self._cache.get(key)
        if rated is None:
            if len(self._cache) >= self.MAX_CACHED:
                self._cache.clear()
            segments = tuple((s.spec, s.seconds) for s in usage.segments)
            rated = self._cache[key] = _rate_segments(card, segments)
        return rated


def _rate_segments(card: RateCard, segments: SegmentsKey) -> RatedHour:
    running = [(spec, seconds) for spec, seconds in segments if seconds > 0]
    exact = sum((card.exact_charge(spec, seconds) for spec, seconds in running), Fraction(0))
    if running:
        top = max(running, key=lambda s: card.monthly_price(s[0]))[0]
        cap, code = monthly_cap(card, top), item_code(top)
    else:
        cap, code = 0, item_code(segments[0][0]) if segments else "VM-IDLE"
    return RatedHour(exact, math.floor(exact), cap, card.currency, card.version, code)


# --- lines, revisions and the cap ------------------------------------------------------------

def line_id(vm_id: UUID, hour_start: datetime, revision: int) -> UUID:
    """A billing line's id, also the wallet's debit/credit id: a replay is a no-op there too.
    Equal to deterministic_id("billing.line", vm_id, <hour_start UTC ISO>, revision), computed
    without its generic joins (it runs once per usage event)."""
    name = f"billing.line|{vm_id}|{_iso_label(hour_start.astimezone(UTC))}|{revision}"
    digest = hashlib.sha1(_NAMESPACE_BYTES + name.encode()).digest()
    # uuid5's own version and variant bits, without UUID's keyword checks
    return UUID(int=int.from_bytes(digest[:16]) & ~_VERSION_AND_VARIANT_BITS | _UUID5_BITS)


_NAMESPACE_BYTES = CONTRACTS_NAMESPACE.bytes
_VERSION_AND_VARIANT_BITS = (0xF000 << 64) | (0xC000 << 48)
_UUID5_BITS = (5 << 76) | (0x8000 << 48)


@lru_cache(maxsize=4096)  # a batch's usage shares a few hours; isoformat is the slow part
def _iso_label(utc: datetime) -> str:
    # Keyed by UTC times only: equal keys are then equal instants (fold cannot differ).
    return utc.isoformat()


@dataclass(frozen=True, slots=True)
class HourState:
    """The latest revision billed for one VM hour, and every revision that has a line."""

    revision: int
    rated: int
    hour_cap: int
    seconds: int
    revisions: frozenset[int] = frozenset()


@dataclass(slots=True)
class VmMonth:
    vm_id: UUID
    month: date
    wallet_id: UUID
    currency: str
    rated: int = 0  # sum of `rated` over each hour's latest revision
    cap: int = 0  # highest `hour_cap` over each hour's latest revision
    charged: int = 0  # sum of line amounts
    # Highest hour_cap among hours not loaded for this batch; known only when a correction
    # may lower the cap (None: the cap can only rise).
    others_cap: int | None = None
    partition: int = 0  # of metering.usage

    @property
    def target(self) -> int:
        return min(self.rated, self.cap)


@dataclass(frozen=True, slots=True)
class Line:
    line_id: UUID
    usage: HourlyUsage
    month: date  # the hour's month (its cap)
    booked_month: date  # the statement it appears on
    rated: RatedHour
    amount: int  # signed: positive is a debit, negative a credit
    stale: bool  # a higher revision was billed before this one arrived: amount 0
    partition: int  # of metering.usage: whose watermarks close its month


@dataclass
class Biller:
    """Applies a batch of usage to the loaded state of the hours and VM months it touches.

    `hours` holds the latest billed revision of each (vm, hour) in the batch that was billed
    before; `vm_months` the state of each (vm, month) in the batch (new ones start empty).
    """

    book: RateCardBook
    hours: dict[tuple[UUID, datetime], HourState]
    vm_months: dict[tuple[UUID, date], VmMonth]
    closed_through: dict[int, date | None] = field(default_factory=dict)
    rater: Rater | None = None
    # each wallet's currency, as billing heard it in wallet.opened; a wallet not heard of yet
    # is rated in the book's home currency (the wallet refuses a charge in another one)
    currencies: dict[UUID, str] = field(default_factory=dict)
    lines: list[Line] = field(default_factory=list)
    # the hours of each VM month known to this batch, to recompute a cap a correction lowered
    _month_hours: dict[tuple[UUID, date], set[datetime]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rater is None or self.rater.book is not self.book:
            self.rater = Rater(self.book)
        for vm_id, at in self.hours:
            self._month_hours.setdefault((vm_id, month_of(at)), set()).add(at)

    def apply(self, usage: HourlyUsage, partition: int) -> Line | None:
        """Bill one usage; None for a duplicate of the revision already billed. Raises
        RatingError for usage that cannot be rated, UsageReused for the latest revision
        billed again with other seconds (nothing changes then)."""
        assert self.rater is not None
        key = (usage.vm_id, usage.hour_start)
        previous = self.hours.get(key)
        if previous is not None and (usage.revision == previous.revision
                                     or usage.revision in previous.revisions):
            # Only the latest revision's seconds are kept: an earlier one's repeat cannot
            # be compared, and stays a repeat.
            if usage.revision == previous.revision and usage.seconds != previous.seconds:
                raise UsageReused(
                    f"usage reused with other content: vm {usage.vm_id} hour "
                    f"{usage.hour_start.isoformat()} revision {usage.revision} was billed "
                    f"for {previous.seconds} s, not {usage.seconds} s")
            # Before rating: a usage billed before stays billed (and its charge can be sent
            # again) even if today's rate cards could no longer price it.
            return None
        rated = self.rater.rate(usage, self.currencies.get(usage.wallet_id))
        month = month_of(usage.hour_start)
        vm_month = self.vm_months.get((usage.vm_id, month))
        if vm_month is None:  # a VM month new in this batch: no hours stored outside it
            vm_month = self.vm_months[(usage.vm_id, month)] = VmMonth(
                usage.vm_id, month, usage.wallet_id, rated.currency, others_cap=0,
                partition=partition)
        if vm_month.currency != rated.currency:
            raise RatingError(f"rate card {rated.rate_card_version} is in {rated.currency}, "
                              f"this VM's month was billed in {vm_month.currency}")
        booked = booked_month(month, self.closed_through.get(partition))
        if previous is not None and usage.revision < previous.revision:
            self.hours[key] = HourState(previous.revision, previous.rated, previous.hour_cap,
                                        previous.seconds, previous.revisions | {usage.revision})
            return self._line(usage, month, booked, rated, 0, partition, stale=True)
        seen = (previous.revisions | {previous.revision}) if previous else frozenset()
        now = HourState(usage.revision, rated.rated, rated.hour_cap, usage.seconds,
                        seen | {usage.revision})
        self.hours[key] = now
        hours_of_month = self._month_hours.setdefault((usage.vm_id, month), set())
        hours_of_month.add(usage.hour_start)
        vm_month.rated += now.rated - (previous.rated if previous else 0)
        if previous is not None and previous.hour_cap > now.hour_cap \
                and vm_month.others_cap is not None:  # the handler loads it for corrections
            vm_month.cap = max(vm_month.others_cap, *(
                self.hours[(usage.vm_id, at)].hour_cap for at in hours_of_month))
        else:
            vm_month.cap = max(vm_month.cap, now.hour_cap)
        amount = vm_month.target - vm_month.charged
        vm_month.charged += amount
        return self._line(usage, month, booked, rated, amount, partition, stale=False)

    def _line(self, usage: HourlyUsage, month: date, booked: date, rated: RatedHour,
              amount: int, partition: int, *, stale: bool) -> Line:
        line = Line(line_id(usage.vm_id, usage.hour_start, usage.revision), usage, month,
                    booked, rated, amount, stale, partition)
        self.lines.append(line)
        return line


# --- wallet entries: one per wallet, hour, revision and kind in a batch --------------------

# Below the contract's bound on VM parts per message, so an entry always fits in one.
MAX_VMS_PER_ENTRY = 2_000


@dataclass(slots=True)
class UsageEntry:
    """The lines of one wallet, hour, revision and kind (debit or credit) billed in one
    batch, charged to the wallet as one ledger entry. Which lines an entry holds is stored
    with them, so the entry sent again after a redelivery is the same entry."""

    entry_id: UUID
    wallet_id: UUID
    hour_start: datetime
    revision: int
    kind: str  # "debit" or "credit"
    currency: str
    vm_ids: list[UUID]
    line_ids: list[UUID]
    amounts: list[int]  # positive, per VM (the line's amount, its sign taken by `kind`)

    @property
    def amount(self) -> int:
        return sum(self.amounts)


def usage_entry_id(first_line_id: UUID) -> UUID:
    """An entry's id, from its first line: each line is in exactly one entry, so the id is
    unique, and the entry rebuilt from storage keeps it."""
    return deterministic_id("billing.usage_entry", first_line_id)


def usage_entries(billed: Iterable[Line | UsageEntry]) -> tuple[list[UsageEntry],
                                                               list[UsageEntry]]:
    """A batch's wallet entries in the order to send them, and which of them are new.

    `billed` is the batch in usage order: a new line, or the stored entry of a usage billed
    before (a redelivery sends it again). New lines join the entry of their wallet, hour,
    revision and kind opened in this batch (one past `MAX_VMS_PER_ENTRY` VMs opens another).
    Entries go out by hour, then revision (then as they came): a correction has a higher
    revision than what it corrects, so it is booked after it, whatever grouping a redelivery
    made. Lines of amount 0 (past the cap, stale) charge nothing and are in no entry."""
    ordered: list[UsageEntry] = []
    new: list[UsageEntry] = []
    sent: set[UUID] = set()
    open_entries: dict[tuple[UUID, datetime, int, str, str], UsageEntry] = {}
    for item in billed:
        if isinstance(item, UsageEntry):
            if item.entry_id not in sent:
                sent.add(item.entry_id)
                ordered.append(item)
            continue
        if item.amount == 0:
            continue
        kind = "debit" if item.amount > 0 else "credit"
        usage = item.usage
        key = (usage.wallet_id, usage.hour_start, usage.revision, kind, item.rated.currency)
        entry = open_entries.get(key)
        if entry is None or len(entry.vm_ids) >= MAX_VMS_PER_ENTRY:
            entry = open_entries[key] = UsageEntry(
                usage_entry_id(item.line_id), usage.wallet_id, usage.hour_start,
                usage.revision, kind, item.rated.currency, [], [], [])
            ordered.append(entry)
            new.append(entry)
        entry.vm_ids.append(usage.vm_id)
        entry.line_ids.append(item.line_id)
        entry.amounts.append(abs(item.amount))
    ordered.sort(key=lambda e: (e.hour_start, e.revision))
    return ordered, new


def booked_month(hour_month: date, closed_through: date | None) -> date:
    """A line is on its hour's statement, unless that month is closed already: then on the
    first open month's, so a closed statement never changes."""
    if closed_through is not None and hour_month <= closed_through:
        return next_month(closed_through)
    return hour_month


# --- month summaries -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MeteredHour:
    hour_start: datetime
    seconds: int
    rated: int


def seconds_billed(hours: Iterable[MeteredHour], cap: int) -> int:
    """Seconds of the hours charged before the cap was reached, in hour order (the hour
    that reaches it counts as billed); later hours are metered but free."""
    billed = 0
    running = 0
    for hour in sorted(hours, key=lambda h: h.hour_start):
        if running >= cap:
            break
        billed += hour.seconds
        running += hour.rated
    return billed


# --- invoices ------------------------------------------------------------------------------

def vat(net: int, percent: int = VAT_PERCENT) -> int:
    """VAT on a net amount in minor units, rounded half away from zero (R0.005 -> R0.01)."""
    magnitude = (abs(net) * percent * 2 + 100) // 200
    return magnitude if net >= 0 else -magnitude


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    item_code: str
    description: str
    quantity: int  # one month of the VM's service; hours are in the description
    net: int

    @property
    def unit_price(self) -> int:
        return self.net // self.quantity

    @property
    def vat(self) -> int:
        return vat(self.net)

    @property
    def total(self) -> int:
        return self.net + self.vat


@dataclass(frozen=True, slots=True)
class Invoice:
    document_number: str
    customer_account: str
    wallet_id: UUID
    organisation_id: UUID
    organisation_name: str
    month: date
    currency: str
    lines: Sequence[InvoiceLine]

    @property
    def document_date(self) -> date:
        return month_end(self.month).date() - timedelta(days=1)

    @property
    def due_date(self) -> date:
        return self.document_date + timedelta(days=30)

    @property
    def net(self) -> int:
        return sum(line.net for line in self.lines)

    @property
    def vat(self) -> int:
        """The sum of the lines' VAT, so the lines add up to the document in any importer."""
        return sum(line.vat for line in self.lines)

    @property
    def total(self) -> int:
        return self.net + self.vat


def customer_account(organisation_id: UUID) -> str:
    """A stable account reference within the 15 characters Sage 200 and GP customer ids take."""
    return "CW" + organisation_id.hex[:13].upper()


def document_number(month: date, sequence: int) -> str:
    return f"INV{month.year:04d}{month.month:02d}-{sequence:06d}"


# --- closing a wallet's month -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class VmBooked:
    """A VM's lines booked on the statement, by the month of the hours they bill."""

    vm_id: UUID
    hour_month: date
    amount: int
    confirmed_amount: int
    item_code: str


@dataclass(frozen=True, slots=True)
class VmHours:
    """A VM's metered hours in the month (latest revisions), its cap and what its lines for
    those hours charged in total (wherever they were booked)."""

    vm_id: UUID
    hours: Sequence[MeteredHour]
    hour_caps: Sequence[int]
    cap: int
    charged: int


@dataclass(frozen=True)
class MonthInput:
    wallet_id: UUID
    month: date
    currency: str
    opening: int
    charges: int  # debits booked this month (positive)
    usage_credits: int  # correction credits booked this month (positive)
    top_ups: int
    refunds: int
    vm_hours: Sequence[VmHours]
    vm_booked: Sequence[VmBooked]
    unconfirmed_count: int
    unconfirmed_amount: int
    issues: Sequence[str]
    mirror_total: int  # billing's sum of the wallet's confirmed movements, all time
    last_balance_after: int | None  # the wallet's own balance in its latest event


@dataclass(frozen=True, slots=True)
class VmSummary:
    vm_id: UUID
    seconds_metered: int
    seconds_billed: int
    amount: int
    rated: int
    cap: int
    debited: int
    item_code: str


@dataclass(frozen=True)
class Statement:
    wallet_id: UUID
    month: date
    currency: str
    opening: int
    charges: int
    credits: int  # top-ups and correction credits
    top_ups: int
    refunds: int
    closing: int
    vms: list[VmSummary]
    mismatches: list[str]
    notes: list[str]


def close_month(m: MonthInput) -> Statement:
    """The month's statement, with every disagreement between metered, rated and debited
    amounts listed rather than smoothed over."""
    mismatches = list(m.issues)
    notes: list[str] = []
    label = month_label(m.month)
    summaries: dict[UUID, VmSummary] = {}
    for vm in m.vm_hours:
        rated = sum(h.rated for h in vm.hours)
        cap = max(vm.hour_caps, default=0)
        expected = min(rated, cap)
        if vm.charged != expected:
            mismatches.append(
                f"vm {vm.vm_id}: lines for {label} charge {vm.charged} but its metered hours "
                f"rate to {rated} capped at {cap}: {expected}")
        if cap != vm.cap:
            mismatches.append(f"vm {vm.vm_id}: cap state {vm.cap} but its hours give {cap}")
        summaries[vm.vm_id] = VmSummary(
            vm.vm_id, sum(h.seconds for h in vm.hours), seconds_billed(vm.hours, cap), 0, rated,
            cap, 0, "")
    for booked in m.vm_booked:
        base = summaries.get(booked.vm_id) or VmSummary(booked.vm_id, 0, 0, 0, 0, 0, 0, "")
        summaries[booked.vm_id] = VmSummary(
            base.vm_id, base.seconds_metered, base.seconds_billed, base.amount + booked.amount,
            base.rated, base.cap, base.debited + booked.confirmed_amount,
            base.item_code or booked.item_code)
        if booked.hour_month != m.month:
            notes.append(f"vm {booked.vm_id}: late correction of {month_label(booked.hour_month)}"
                         f" usage booked on this statement: {booked.amount}")
    if m.unconfirmed_count:
        mismatches.append(
            f"{m.unconfirmed_count} debits/credits totalling {m.unconfirmed_amount} not confirmed "
            f"by the wallet when the month closed")
    if m.last_balance_after is not None and m.mirror_total != m.last_balance_after:
        mismatches.append(
            f"billing's record of the wallet's movements adds up to {m.mirror_total} but the "
            f"wallet reported a balance of {m.last_balance_after}")
    elif m.last_balance_after is None:
        notes.append("wallet not known to billing (no wallet.opened seen); balances are "
                     "billing's own record")
    credits = m.usage_credits + m.top_ups
    closing = m.opening - m.charges + credits + m.refunds
    return Statement(m.wallet_id, m.month, m.currency, m.opening, m.charges, credits, m.top_ups,
                     m.refunds, closing, sorted(summaries.values(), key=lambda s: str(s.vm_id)),
                     mismatches, notes)


def invoice_lines(statement: Statement) -> list[InvoiceLine]:
    """One line per VM charged on the statement. Quantity 1 (the VM's month of service) and
    the unit price is the exact charge: hours times an hourly rate would not equal it once
    per-hour rounding and the cap apply, so the hours go in the description instead."""
    lines = []
    for vm in statement.vms:
        if vm.amount == 0:
            continue
        description = (f"VM {vm.vm_id} {month_label(statement.month)}: "
                       f"{vm.seconds_metered / 3600:.2f} h metered, "
                       f"{vm.seconds_billed / 3600:.2f} h billed")
        lines.append(InvoiceLine(vm.item_code or "VM-USAGE", description, 1, vm.amount))
    return lines


def ready_to_close(pending: Sequence[tuple[UUID, date]], unconfirmed: dict[tuple[UUID, date], int],
                   low_watermark: datetime | None, grace: timedelta) -> list[tuple[UUID, date]]:
    """Pending (wallet, month) closes that may close now: every debit on the month confirmed
    by the wallet, or the grace period after month end passed in event time. A wallet's
    months close in order."""
    ready: list[tuple[UUID, date]] = []
    blocked: set[UUID] = set()
    for wallet_id, month in sorted(pending, key=lambda p: (p[1], str(p[0]))):
        if wallet_id in blocked:
            continue
        overdue = low_watermark is not None and low_watermark >= month_end(month) + grace
        if unconfirmed.get((wallet_id, month), 0) == 0 or overdue:
            ready.append((wallet_id, month))
        else:
            blocked.add(wallet_id)
    return ready
