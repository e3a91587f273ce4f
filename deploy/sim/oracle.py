"""The independent oracle: from the scenario alone, what every wallet, VM, statement and
invoice must come to, and which requests and refunds must be refused.

It imports no service code and nothing from `shared`: its rules are written again here from
the product's documents (docs/billing.md, docs/metering.md, the wallet's funds rules), and
listed next to those rules in docs/simulation.md. Money is integer cents and exact fractions.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from deploy.sim.oracle_state import Expected, Hold, MonthTotals, Vm, Wallet
from deploy.sim.prices import (
    CREATE_S,
    DEFAULT_CARD,
    DELETE_S,
    POWER_ON_S,
    POWER_S,
    REFUND_CAP_PERCENT,
    RESIZE_S,
    Card,
    card_of,
    hold_for,
    rate,
    vat,
)
from deploy.sim.scenario import (
    POWER_OFFSET,
    SYNC,
    Action,
    Scenario,
    Size,
    month_of,
    running_wanted,
)


class Oracle:
    def __init__(self, scenario: Scenario) -> None:
        self.s = scenario
        later = sorted((card_of(c) for c in scenario.rate_cards), key=lambda c: c.effective_from)
        self.cards = [DEFAULT_CARD, *later]  # every currency's, each in effective order
        self.wallets = {c.ticker: Wallet(c) for c in scenario.companies}
        self.vms: dict[str, Vm] = {}
        self.months: dict[tuple[str, date], MonthTotals] = {}
        self.requests: dict[tuple[datetime, str], str] = {}
        self.refunds: dict[tuple[datetime, str], str] = {}
        self.suspensions: list[tuple[str, datetime]] = []
        self.top_ups: list[tuple[str, datetime, int, str]] = []
        self.fleet: dict[tuple[str, date], int] = {}
        self.daily_balance: dict[str, list[tuple[datetime, int]]] = {}
        self.refunded: dict[tuple[str, datetime], int] = {}
        self.usage_events = 0
        self.usage_by_day: dict[date, int] = {}

    def card(self, at: datetime, currency: str = "ZAR") -> Card | None:
        """The rate card of `currency` in effect at `at`: the latest of that currency that
        took effect by then; None if none has (nothing is priced in another currency)."""
        cards = [c for c in self.cards if c.currency == currency and c.effective_from <= at]
        return cards[-1] if cards else None

    # --- the run ------------------------------------------------------------------------------

    def run(self) -> Expected:
        points = self.s.sync_points()
        for index, at in enumerate(points):
            if index:
                self.close_hours(points[index - 1], at)
            if index == len(points) - 1:
                break
            if index == 0:
                self.open_wallets(at)
            self.act(at, first=index == 0)
            self.plan_power(at)
            for ticker, wallet in self.wallets.items():
                self.daily_balance.setdefault(ticker, []).append((at, wallet.balance))
                self.fleet[(ticker, at.date())] = sum(
                    1 for v in self.vms.values() if v.ticker == ticker and not v.gone)
        return self.expected()

    def open_wallets(self, at: datetime) -> None:
        for wallet in self.wallets.values():
            if wallet.company.opening_top_up:
                self.top_up(wallet, at, wallet.company.opening_top_up, "opening")

    def act(self, at: datetime, *, first: bool) -> None:
        """The companies' actions at a sync point, in the driver's order: payments, refunds,
        fleet changes (one per company, except the first day's fleet), auto top-up settings."""
        for wallet in self.wallets.values():
            c = wallet.company
            if c.pays_invoices and at.day == 3 and at - timedelta(days=3) >= self.s.start:
                last = month_of(at - timedelta(days=3))
                owed = self.months.get((c.ticker, last), MonthTotals()).charges
                if owed > 0:
                    self.top_up(wallet, at, owed, "invoice payment")
            if (c.late_top_up_after_days is not None and wallet.suspended_since is not None
                    and at - wallet.suspended_since >= timedelta(days=c.late_top_up_after_days)):
                self.top_up(wallet, at, c.late_top_up, "late top-up")
        actions = self.s.actions.get(at, [])
        for action in (a for a in actions if a.kind == "refund"):
            self.refund(action)
        for action in (a for a in actions if a.kind == "delete"):
            self.delete(action)
        for action in (a for a in actions if a.kind == "resize"):
            self.resize(action)
        for action in (a for a in actions if a.kind == "request"):
            self.request(action)
        if first:
            for wallet in self.wallets.values():
                if wallet.company.auto_top_up:
                    self.enable_auto_top_up(wallet, at)

    # --- the wallet's funds rules (docs/architecture.md, README "Money") ---------------------

    def thresholds(self, wallet: Wallet, at: datetime) -> None:
        """Edge-triggered: depleted below zero, restored above it; low below the trigger
        (with auto top-up: the payment gateway is asked, a tok_decline card is declined)."""
        available = wallet.available
        if available < 0 and not wallet.depleted:
            wallet.depleted = True
            self.suspend(wallet, at)
        elif available > 0 and wallet.depleted:
            wallet.depleted = False
            self.resume(wallet, at)
        low = available < wallet.trigger
        if low and not wallet.low:
            wallet.low = True
            self.auto_top_up(wallet, at)
        elif not low and wallet.low:
            wallet.low = False

    def enable_auto_top_up(self, wallet: Wallet, at: datetime) -> None:
        wallet.auto_top_up_on = True
        if wallet.available < wallet.trigger:
            wallet.low = True
            self.auto_top_up(wallet, at)

    def auto_top_up(self, wallet: Wallet, at: datetime) -> None:
        auto = wallet.company.auto_top_up
        if auto is None or not wallet.auto_top_up_on or auto.card_token.startswith("tok_decline"):
            return
        self.top_up(wallet, at, auto.amount, "auto top-up")

    def top_up(self, wallet: Wallet, at: datetime, amount: int, source: str) -> None:
        wallet.balance += amount
        self.top_ups.append((wallet.company.ticker, at, amount, source))
        self.month(wallet, at).top_ups += amount
        self.thresholds(wallet, at)

    def month(self, wallet: Wallet, at: datetime) -> MonthTotals:
        """Top-ups and refunds belong to the month open when billing records them: the
        month of the sync point the driver had moved the clock to."""
        return self.months.setdefault((wallet.company.ticker, month_of(at)), MonthTotals())

    def suspend(self, wallet: Wallet, at: datetime) -> None:
        """Provisioning powers off the organisation's running VMs when it learns of the
        depletion: at the sync point whose quiet period it happens in."""
        wallet.suspended_since = at
        self.suspensions.append((wallet.company.ticker, at))
        for vm in self._vms_of(wallet):
            if self._running_at(vm, at) and not vm.suspended_for_funds:
                vm.suspended_for_funds = True
                vm.add(at + timedelta(seconds=POWER_S), "off")

    def resume(self, wallet: Wallet, at: datetime) -> None:
        wallet.suspended_since = None
        for vm in self._vms_of(wallet):
            if vm.suspended_for_funds:
                vm.suspended_for_funds = False
                vm.add(at + timedelta(seconds=POWER_S), "on")

    def _vms_of(self, wallet: Wallet) -> list[Vm]:
        return [v for v in self.vms.values() if v.ticker == wallet.company.ticker and not v.gone]

    # --- actions ----------------------------------------------------------------------------

    def request(self, action: Action) -> None:
        assert action.size is not None
        wallet = self.wallets[action.ticker]
        card = self.card(action.at, wallet.company.currency)
        if card is None:  # no price in the wallet's currency yet: refused (422), no hold
            self.requests[(action.at, action.vm)] = "invalid"
            return
        amount = hold_for(action.size, card)
        if wallet.available < amount:
            self.requests[(action.at, action.vm)] = "rejected"
            return
        self.requests[(action.at, action.vm)] = "succeeded"
        wallet.held += amount
        wallet.holds.append(Hold(action.vm, amount))
        self.thresholds(wallet, action.at)
        vm = self.vms[action.vm] = Vm(action.vm, action.ticker, action.size, action.at)
        vm.add(action.at + timedelta(seconds=CREATE_S), "created", action.size)
        vm.add(action.at + timedelta(seconds=CREATE_S + POWER_ON_S), "on")

    def resize(self, action: Action) -> None:
        assert action.size is not None
        vm = self.vms.get(action.vm)
        if vm is None or vm.gone:
            self.requests[(action.at, action.vm)] = "skipped"
            return
        if action.size == vm.size:  # a resize refused earlier left it at this size
            self.requests[(action.at, action.vm)] = "invalid"
            return
        wallet = self.wallets[action.ticker]
        card = self.card(action.at, wallet.company.currency)
        if card is None:
            self.requests[(action.at, action.vm)] = "invalid"
            return
        increase = max(hold_for(action.size, card) - hold_for(vm.size, card), 0)
        if increase and wallet.available < increase:
            self.requests[(action.at, action.vm)] = "rejected"
            return
        self.requests[(action.at, action.vm)] = "succeeded"
        if increase:
            wallet.held += increase
            wallet.holds.append(Hold(action.vm, increase))
            self.thresholds(wallet, action.at)
        vm.size = action.size
        vm.add(action.at + timedelta(seconds=RESIZE_S), "resized", action.size)

    def delete(self, action: Action) -> None:
        vm = self.vms.get(action.vm)
        if vm is None or vm.gone:
            return
        vm.gone = True
        vm.suspended_for_funds = False
        deleted_at = action.at + timedelta(seconds=DELETE_S)
        vm.add(deleted_at, "deleted")
        wallet = self.wallets[action.ticker]
        for hold in wallet.holds:
            if hold.vm == vm.key and hold.open:
                wallet.held -= hold.remaining
                hold.remaining, hold.open = 0, False
        self.thresholds(wallet, deleted_at)

    def refund(self, action: Action) -> None:
        """A refund of part of one VM hour's charge: at most 95% of it, with earlier refunds."""
        assert action.hour is not None
        vm = self.vms.get(action.vm)
        charge = vm.hours.get(action.hour, (0, 0, 0))[2] if vm else 0
        amount = charge * action.percent // 100
        key = (action.at, action.vm)
        if charge <= 0 or amount <= 0:
            self.refunds[key] = "skipped"
            return
        done = self.refunded.get((action.vm, action.hour), 0)
        if done + amount > charge * REFUND_CAP_PERCENT // 100:
            self.refunds[key] = "refused"
            return
        self.refunded[(action.vm, action.hour)] = done + amount
        self.refunds[key] = "applied"
        wallet = self.wallets[action.ticker]
        wallet.balance += amount
        self.month(wallet, action.at).refunds += amount
        self.thresholds(wallet, action.at)

    # --- customers' rhythm (what the driver publishes as vCenter hooks) -----------------------

    def plan_power(self, at: datetime) -> None:
        """For every live VM of an organisation not suspended: its industry's wanted state at
        a quarter past the sync point, then every change of it within the day."""
        for vm in self.vms.values():
            wallet = self.wallets[vm.ticker]
            if vm.gone or wallet.suspended_since is not None:
                continue
            profile = wallet.company.profile
            previous = None
            for hour in range(int(SYNC / timedelta(hours=1))):
                start = at + timedelta(hours=hour)
                wanted = running_wanted(profile, start)
                if wanted != previous:
                    vm.add(start + POWER_OFFSET, "on" if wanted else "off")
                previous = wanted

    # --- metering and billing (docs/metering.md, docs/billing.md) ---------------------------

    @staticmethod
    def _running_at(vm: Vm, at: datetime) -> bool:
        """Running at a sync point (every hour before it is metered, no event falls on it)."""
        assert all(e[0] > at for e in vm.events)
        return vm.running

    def close_hours(self, start: datetime, end: datetime) -> None:
        """Meter and bill every hour in [start, end) for every VM, then book the debits in
        hour order: each draws the VM's holds down first (oldest first)."""
        debits: list[tuple[datetime, str, int]] = []
        before = self.usage_events
        for vm in self.vms.values():
            debits += self.meter(vm, start, end)
        self.usage_by_day[end.date()] = self.usage_events - before
        for hour, key, amount in sorted(debits, key=lambda d: (d[0], d[1])):
            vm = self.vms[key]
            wallet = self.wallets[vm.ticker]
            to_draw = amount
            for hold in wallet.holds:
                if to_draw == 0:
                    break
                if hold.open and hold.vm == key:
                    take = min(hold.remaining, to_draw)
                    hold.remaining -= take
                    to_draw -= take
                    wallet.held -= take
                    if hold.remaining == 0:
                        hold.open = False
            wallet.balance -= amount
            self.months.setdefault((vm.ticker, month_of(hour)), MonthTotals()).charges += amount
            self.thresholds(wallet, end)

    def meter(self, vm: Vm, start: datetime, end: datetime) -> list[tuple[datetime, str, int]]:
        """Seconds per size in each hour (whole seconds here), only hours that ran."""
        events = sorted((e for e in vm.events if e[0] < end), key=lambda e: (e[0], e[1]))
        vm.events = [e for e in vm.events if e[0] >= end]
        debits = []
        hour = start
        index = 0
        while hour < end:
            hour_end = hour + timedelta(hours=1)
            seconds: dict[Size, int] = {}
            cursor = hour
            while index < len(events) and events[index][0] < hour_end:
                when, _order, kind, size = events[index]
                if vm.running and vm.current is not None:
                    seconds[vm.current] = seconds.get(vm.current, 0) + int(
                        (when - cursor).total_seconds())
                cursor = when
                if vm.deleted:
                    pass
                elif kind == "created":
                    vm.current, vm.running = size, False
                elif kind == "resized":
                    vm.current = size
                elif kind == "on":
                    vm.running = vm.current is not None
                elif kind == "off":
                    vm.running = False
                else:
                    vm.running, vm.deleted = False, True
                index += 1
            if vm.running and vm.current is not None:
                seconds[vm.current] = seconds.get(vm.current, 0) + int(
                    (hour_end - cursor).total_seconds())
            ran = {size: s for size, s in seconds.items() if s > 0}
            if ran:
                debits += self.bill(vm, hour, ran)
            hour = hour_end
        return debits

    def bill(self, vm: Vm, hour: datetime, ran: dict[Size, int]) -> list[tuple[datetime, str, int]]:
        """One line per hour: the segments' exact charges summed, rounded down once; the
        month's charges are min(sum of the hours, highest monthly price that ran)."""
        self.usage_events += 1
        card = self.card(hour, self.wallets[vm.ticker].company.currency)
        assert card is not None, "a VM exists only once its currency has a card"
        rated, hour_cap = rate(tuple(sorted(ran.items(), key=lambda i: repr(i[0]))), card)
        state = vm.months.setdefault(month_of(hour), [0, 0, 0])  # rated, cap, charged
        state[0] += rated
        state[1] = max(state[1], hour_cap)
        amount = min(state[0], state[1]) - state[2]
        state[2] += amount
        vm.hours[hour] = (sum(ran.values()), rated, amount)
        return [(hour, vm.key, amount)] if amount > 0 else []

    # --- what the services must report --------------------------------------------------------

    def expected(self) -> Expected:
        statements: dict[tuple[str, date], dict[str, int]] = {}
        invoices: dict[tuple[str, date], int] = {}
        vm_months: dict[tuple[str, date], dict[str, int]] = {}
        for ticker in self.wallets:
            closing = 0
            for month in self.s.months():
                t = self.months.get((ticker, month), MonthTotals())
                opening = closing
                closing = opening - t.charges + t.top_ups + t.refunds
                statements[(ticker, month)] = {
                    "opening": opening, "charges": t.charges, "credits": t.top_ups,
                    "refunds": t.refunds, "closing": closing}
        for vm in self.vms.values():
            for month in self.s.months():
                hours = sorted((h, v) for h, v in vm.hours.items() if month_of(h) == month)
                if not hours:
                    continue
                rated_cap = vm.months[month]
                billed, running = 0, 0
                for _h, (secs, rated, _amount) in hours:
                    if running >= rated_cap[1]:
                        break
                    billed += secs
                    running += rated
                vm_months[(vm.key, month)] = {
                    "seconds_metered": sum(v[0] for _h, v in hours), "seconds_billed": billed,
                    "amount": sum(v[2] for _h, v in hours)}
        for ticker, wallet in self.wallets.items():
            if wallet.company.billing_mode != "INVOICE":
                continue
            for month in self.s.months():
                nets = [vm_months[(v.key, month)]["amount"] for v in self.vms.values()
                        if v.ticker == ticker and (v.key, month) in vm_months]
                nets = [n for n in nets if n]
                if nets:
                    invoices[(ticker, month)] = sum(n + vat(n) for n in nets)
        return Expected(
            balances={t: w.balance for t, w in self.wallets.items()}, statements=statements,
            vm_months=vm_months, invoices=invoices, requests=self.requests,
            refunds=self.refunds, suspensions=self.suspensions, top_ups=self.top_ups,
            fleet=self.fleet, daily_balance=self.daily_balance, usage_events=self.usage_events,
            usage_by_day=self.usage_by_day)
