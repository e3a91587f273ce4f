from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.wallet.domain import (
    AutoTopUp,
    BillingMode,
    Depleted,
    EntryKind,
    FundsRestored,
    HoldStatus,
    HourEntry,
    LowBalance,
    PastRefund,
    Refundable,
    Refunded,
    Rejected,
    Rejection,
    Reserved,
    ToppedUp,
    UsageParts,
    Wallet,
    WalletError,
    burn_rate,
    refund_cap,
    refund_limits,
    usage_description,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TTL = timedelta(hours=1)
MAX_TOPUP = 100_000_000


def wallet(balance: int = 0, mode: BillingMode = BillingMode.PAYG, credit: int = 0,
           threshold: int = 0) -> Wallet:
    w = Wallet(uuid4(), uuid4(), "ZAR", mode, credit_limit=credit,
               low_balance_threshold=threshold)
    if balance:
        w.top_up(payment_id="opening", amount=balance, currency="ZAR", at=T0, max_amount=MAX_TOPUP)
        w.take_facts()
    return w


def reserve(w: Wallet, amount: int, currency: str = "ZAR", vm=None, at=T0):
    return w.reserve(request_id=uuid4(), vm_id=vm or uuid4(), hold_id=uuid4(), amount=amount,
                     currency=currency, purpose="create", at=at, ttl=TTL)


def rejection(w: Wallet) -> Rejected:
    facts = [f for f in w.take_facts() if isinstance(f, Rejected)]
    assert len(facts) == 1
    return facts[0]


# --- the seed's scenarios ---------------------------------------------------------------

def test_ten_thousand_rand_wallet_reserves_a_five_hundred_rand_vm():
    w = wallet(1_000_000)
    hold = reserve(w, 50_000)
    assert hold is not None and hold.status is HoldStatus.PENDING
    assert (w.balance, w.held, w.available) == (1_000_000, 50_000, 950_000)
    assert any(isinstance(f, Reserved) for f in w.take_facts())


def test_five_rand_wallet_rejects_a_thousand_rand_vm():
    w = wallet(500)
    assert reserve(w, 100_000) is None
    r = rejection(w)
    assert r.reason is Rejection.INSUFFICIENT_FUNDS
    assert (r.available, r.required) == (500, 100_000)
    assert w.held == 0


@pytest.mark.parametrize("price", [15_000, 30_000, 60_000, 120_000])
def test_every_tier_rejected_against_a_low_balance(price):
    w = wallet(500)
    assert reserve(w, price) is None
    assert rejection(w).reason is Rejection.INSUFFICIENT_FUNDS


def test_exact_funds_pass_and_one_cent_more_fails():
    w = wallet(15_000)
    assert reserve(w, 15_000) is not None
    assert reserve(w, 1) is None
    w.take_facts()


# --- rejections -------------------------------------------------------------------------

def test_currency_mismatch_is_rejected_with_reason():
    w = wallet(1_000_000)
    assert reserve(w, 100, currency="USD") is None
    r = rejection(w)
    assert r.reason is Rejection.CURRENCY_MISMATCH and "USD" in r.detail


def test_suspended_wallet_rejects():
    w = wallet(1_000_000)
    w.suspended = True
    assert reserve(w, 100) is None
    assert rejection(w).reason is Rejection.WALLET_SUSPENDED


@pytest.mark.parametrize("amount", [0, -5])
def test_non_positive_amount_is_invalid(amount):
    w = wallet(1_000)
    assert reserve(w, amount) is None
    assert rejection(w).reason is Rejection.INVALID_AMOUNT


# --- invoice customers ------------------------------------------------------------------

def test_invoice_customer_may_go_into_credit_up_to_the_limit():
    w = wallet(0, BillingMode.INVOICE, credit=100_000)
    assert w.available == 100_000
    assert reserve(w, 60_000) is not None
    assert reserve(w, 40_000) is not None
    assert reserve(w, 1) is None
    assert rejection(w).reason is Rejection.INSUFFICIENT_FUNDS


def test_invoice_debit_past_credit_limit_emits_depleted():
    w = wallet(0, BillingMode.INVOICE, credit=1_000)
    w.debit_usage(amount=1_500, key="d1", at=T0, vm_id=None, holds=[])
    assert w.balance == -1_500
    assert any(isinstance(f, Depleted) for f in w.take_facts())


def test_payg_wallet_cannot_have_credit():
    with pytest.raises(WalletError):
        Wallet(uuid4(), uuid4(), "ZAR", BillingMode.PAYG, credit_limit=10)


# --- holds ------------------------------------------------------------------------------

def test_release_returns_funds_and_is_idempotent():
    w = wallet(10_000)
    hold = reserve(w, 6_000)
    w.release(hold, T0)
    w.release(hold, T0)
    assert (w.held, w.available, hold.status) == (0, 10_000, HoldStatus.RELEASED)


def test_a_wallet_never_confirms_or_releases_another_wallets_hold():
    mine, other = wallet(10_000), wallet(10_000)
    hold = reserve(other, 6_000)
    with pytest.raises(WalletError, match="belongs to wallet"):
        mine.release(hold, T0)
    with pytest.raises(WalletError, match="belongs to wallet"):
        mine.confirm(hold)
    assert (mine.held, other.held, hold.status) == (0, 6_000, HoldStatus.PENDING)


def test_pending_hold_expires_after_its_deadline_only():
    w = wallet(10_000)
    hold = reserve(w, 6_000)
    assert not w.expire(hold, T0 + TTL - timedelta(seconds=1))
    assert w.expire(hold, T0 + TTL)
    assert (w.held, hold.status) == (0, HoldStatus.EXPIRED)


def test_confirmed_hold_does_not_expire_and_is_drawn_down_by_usage():
    w = wallet(10_000)
    vm = uuid4()
    hold = reserve(w, 6_000, vm=vm)
    w.confirm(hold)
    assert not w.expire(hold, T0 + 10 * TTL)
    w.debit_usage(amount=2_500, key="d1", at=T0, vm_id=vm, holds=[hold])
    assert (w.balance, w.held, hold.remaining) == (7_500, 3_500, 3_500)
    assert w.available == 4_000  # usage within the hold does not reduce available funds
    w.debit_usage(amount=5_000, key="d2", at=T0, vm_id=vm, holds=[hold])
    assert (w.held, hold.status, w.balance) == (0, HoldStatus.CONSUMED, 2_500)


def test_usage_of_another_vm_does_not_draw_a_hold():
    w = wallet(10_000)
    hold = reserve(w, 6_000)
    w.debit_usage(amount=1_000, key="d1", at=T0, vm_id=uuid4(), holds=[hold])
    assert hold.remaining == 6_000 and w.held == 6_000


def test_usage_is_recorded_even_when_funds_are_exhausted():  # and past zero is depleted
    w = wallet(100)
    entry = w.debit_usage(amount=500, key="d1", at=T0, vm_id=None, holds=[])
    assert entry.amount == -500 and entry.balance_after == -400
    facts = w.take_facts()
    assert any(isinstance(f, Depleted) for f in facts)


# --- thresholds -------------------------------------------------------------------------

def test_low_balance_is_reported_once_per_crossing():
    w = wallet(10_000, threshold=5_000)
    w.debit_usage(amount=6_000, key="d1", at=T0, vm_id=None, holds=[])
    w.debit_usage(amount=1_000, key="d2", at=T0, vm_id=None, holds=[])
    lows = [f for f in w.take_facts() if isinstance(f, LowBalance)]
    assert lows == [LowBalance(4_000, 5_000)]
    w.top_up(payment_id="p", amount=10_000, currency="ZAR", at=T0, max_amount=MAX_TOPUP)
    w.debit_usage(amount=9_000, key="d3", at=T0, vm_id=None, holds=[])
    assert len([f for f in w.take_facts() if isinstance(f, LowBalance)]) == 1


def test_auto_topup_threshold_counts_as_low_balance():
    w = wallet(10_000, threshold=0)
    w.auto_topup = AutoTopUp(threshold=8_000, amount=20_000, card_token="tok")
    w.debit_usage(amount=3_000, key="d1", at=T0, vm_id=None, holds=[])
    assert LowBalance(7_000, 8_000) in w.take_facts()


def test_turning_auto_topup_on_while_already_low_asks_for_a_top_up_once():
    w = wallet(5_000, threshold=10_000)  # low already: its alert went out at the top-up
    auto = AutoTopUp(threshold=20_000, amount=100_000, card_token="tok")
    w.set_auto_topup(auto)
    assert w.take_facts() == [LowBalance(5_000, 20_000)] and w.low_balance
    w.set_auto_topup(AutoTopUp(threshold=20_000, amount=100_000, card_token="tok"))
    assert w.take_facts() == []  # the same settings again: no second charge
    w.set_auto_topup(AutoTopUp(threshold=30_000, amount=50_000, card_token="tok2"))
    assert w.take_facts() == []  # already asked at this crossing: a new card asks nothing
    w.set_auto_topup(None)
    assert w.take_facts() == [] and w.auto_topup is None
    w.set_auto_topup(auto)  # off, then on again while still low: asks again
    assert w.take_facts() == [LowBalance(5_000, 20_000)]
    rich = wallet(50_000, threshold=10_000)
    rich.set_auto_topup(auto)
    assert rich.take_facts() == [] and rich.auto_topup == auto


def test_depleted_then_restored_by_top_up():
    w = wallet(1_000)
    w.debit_usage(amount=1_000, key="d1", at=T0, vm_id=None, holds=[])
    assert not any(isinstance(f, Depleted) for f in w.take_facts())  # exactly zero is not past
    w.debit_usage(amount=1, key="d2", at=T0, vm_id=None, holds=[])
    assert Depleted(-1) in w.take_facts()
    w.top_up(payment_id="p2", amount=1, currency="ZAR", at=T0, max_amount=MAX_TOPUP)
    assert not any(isinstance(f, FundsRestored) for f in w.take_facts())
    w.top_up(payment_id="p3", amount=500, currency="ZAR", at=T0, max_amount=MAX_TOPUP)
    facts = w.take_facts()
    assert FundsRestored(500) in facts
    assert ToppedUp("p3", 500, 500) in facts


def test_reserving_every_last_cent_does_not_deplete_the_wallet():
    w = wallet(30_000)
    vm = uuid4()
    hold = reserve(w, 30_000, vm=vm)
    w.confirm(hold)
    w.debit_usage(amount=41, key="d1", at=T0, vm_id=vm, holds=[hold])
    assert w.available == 0
    assert not any(isinstance(f, Depleted) for f in w.take_facts())


# --- top-ups ----------------------------------------------------------------------------

@pytest.mark.parametrize(("amount", "currency", "message"), [
    (0, "ZAR", "positive"), (-1, "ZAR", "positive"), (MAX_TOPUP + 1, "ZAR", "maximum"),
    (100, "USD", "USD"),
])
def test_invalid_top_ups_are_refused(amount, currency, message):
    w = wallet(0)
    with pytest.raises(WalletError, match=message):
        w.top_up(payment_id="p", amount=amount, currency=currency, at=T0, max_amount=MAX_TOPUP)
    assert w.balance == 0 and not w.entries


# --- refunds ----------------------------------------------------------------------------

VM_A, VM_B = uuid4(), uuid4()


def usage_hour(*entries: tuple[int, bool, dict], refunds=()) -> list[HourEntry]:
    """(entry id, debit?, {vm: amount}) usage entries of one wallet hour."""
    return [HourEntry(n, debit, sum(parts.values()), parts) for n, debit, parts in entries]


def refundable(entry_id: int, hour: list[HourEntry], refunds=()) -> Refundable:
    this = next(e for e in hour if e.entry_id == entry_id)
    return Refundable(entry_id, -this.amount, hour, list(refunds))


def test_a_usage_entry_is_refundable_on_what_its_hour_still_costs():
    # the hour: 10,000 debited over two VMs, then a correction credit of 6,000 for VM A
    hour = usage_hour((1, True, {VM_A: 8_000, VM_B: 2_000}), (2, False, {VM_A: 6_000}))
    w = wallet(10_000)
    with pytest.raises(WalletError, match="the entry after the hour's correction credits: "
                                          "cap 3800"):
        w.refund(refund_id=uuid4(), charge=refundable(1, hour), amount=3_801, at=T0)
    entry = w.refund(refund_id=uuid4(), charge=refundable(1, hour), amount=3_800, at=T0)
    assert entry.refunds_entry_id == 1 and entry.vm_id is None and w.balance == 13_800


def test_a_vm_within_an_entry_is_refundable_on_what_that_vm_still_costs():
    hour = usage_hour((1, True, {VM_A: 8_000, VM_B: 2_000}), (2, False, {VM_A: 6_000}))
    w = wallet(10_000)
    # VM A still costs 2,000 of its 8,000: 95% of that is 1,900
    with pytest.raises(WalletError, match=f"vm {VM_A}'s part of the entry after the hour's "
                                          "correction credits: cap 1900"):
        w.refund(refund_id=uuid4(), charge=refundable(1, hour), amount=1_901, at=T0, vm_id=VM_A)
    entry = w.refund(refund_id=uuid4(), charge=refundable(1, hour), amount=1_900, at=T0,
                     vm_id=VM_A)
    assert entry.vm_id == VM_A
    assert [f.vm_id for f in w.take_facts() if isinstance(f, Refunded)] == [VM_A]
    # VM B is untouched by the correction: 95% of its 2,000
    w.refund(refund_id=uuid4(), charge=refundable(1, hour), amount=1_900, at=T0, vm_id=VM_B)


def test_earlier_refunds_count_per_vm_per_entry_and_per_hour():
    hour = usage_hour((1, True, {VM_A: 1_000, VM_B: 1_000}), (2, True, {VM_A: 1_000}))
    w = wallet(0)
    earlier = [PastRefund(1, VM_A, 900)]
    # VM A's part of entry 1 (1,000): 950 at most, 900 given back already
    with pytest.raises(WalletError, match="cap 950, already refunded 900, requested 51"):
        w.refund(refund_id=uuid4(), charge=refundable(1, hour, earlier), amount=51, at=T0,
                 vm_id=VM_A)
    # with a credit of 1,000 for VM A, VM A's hour still costs 1,000 over both entries:
    # 950 at most, 900 of it refunded (of entry 1), whichever entry is named
    corrected = [*hour, HourEntry(3, False, 1_000, {VM_A: 1_000})]
    with pytest.raises(WalletError, match=f"what vm {VM_A} still costs in the hour: cap 950, "
                                          "already refunded 900, requested 51"):
        w.refund(refund_id=uuid4(), charge=refundable(2, corrected, earlier), amount=51, at=T0,
                 vm_id=VM_A)
    w.refund(refund_id=uuid4(), charge=refundable(2, corrected, earlier), amount=50, at=T0,
             vm_id=VM_A)
    # a whole-entry refund counts what was refunded of its VMs
    with pytest.raises(WalletError, match="the entry: cap 1900, already refunded 900"):
        w.refund(refund_id=uuid4(), charge=refundable(1, hour, earlier), amount=1_001, at=T0)
    w.refund(refund_id=uuid4(), charge=refundable(1, hour, earlier), amount=1_000, at=T0)


def test_the_refunds_of_one_hour_stay_within_95_percent_of_what_it_still_costs():
    # debits 10,000 and 5,000 for one hour, then a 9,000 credit: 6,000 still charged
    hour = usage_hour((1, True, {VM_A: 10_000}), (2, True, {VM_A: 5_000}),
                      (3, False, {VM_A: 9_000}))
    w = wallet(20_000)
    w.refund(refund_id=uuid4(), charge=refundable(1, hour), amount=5_700, at=T0)
    with pytest.raises(WalletError, match="what the hour still costs: cap 5700"):
        w.refund(refund_id=uuid4(), charge=refundable(2, hour, [PastRefund(1, VM_A, 5_700)]),
                 amount=1, at=T0)


def test_a_one_vm_entry_is_refunded_as_that_vms_and_other_vms_are_refused():
    hour = usage_hour((1, True, {VM_A: 1_000}))
    limits = refund_limits(refundable(1, hour))
    assert limits.vm_id == VM_A and min(c.cap for c in limits.caps) == 950
    with pytest.raises(WalletError, match=f"vm {VM_B} has no part in entry 1"):
        refund_limits(refundable(1, hour), VM_B)
    with pytest.raises(WalletError, match="not a usage entry"):
        refund_limits(Refundable(7, -500, None, []), VM_A)


def test_a_fully_credited_hour_refunds_nothing():
    hour = usage_hour((1, True, {VM_A: 500}), (2, False, {VM_A: 500}))
    with pytest.raises(WalletError, match="cap 0"):
        wallet(0).refund(refund_id=uuid4(), charge=refundable(1, hour), amount=1, at=T0)


def test_refund_capped_at_95_percent_cumulatively():
    w = wallet(10_000)
    charge = w.debit_usage(amount=1_000, key="d1", at=T0, vm_id=None, holds=[])
    assert refund_cap(1_000) == 950
    w.refund(refund_id=uuid4(), charge=Refundable(1, charge.amount, None, []), amount=600,
             at=T0)
    with pytest.raises(WalletError, match="95%"):
        w.refund(refund_id=uuid4(), charge=Refundable(1, charge.amount, None, [
            PastRefund(1, None, 600)]), amount=351, at=T0)
    w.refund(refund_id=uuid4(), charge=Refundable(1, charge.amount, None, [
        PastRefund(1, None, 600)]), amount=350, at=T0)
    assert w.balance == 10_000 - 1_000 + 950
    assert len([f for f in w.take_facts() if isinstance(f, Refunded)]) == 2


def test_only_charges_can_be_refunded():
    w = wallet(10_000)
    with pytest.raises(WalletError, match="charge"):
        w.refund(refund_id=uuid4(), charge=Refundable(1, 10_000, None, []), amount=1, at=T0)


def test_refund_cap_rounds_down():
    assert refund_cap(1) == 0
    assert refund_cap(15_000) == 14_250
    assert refund_cap(333) == 316


# --- burn rate --------------------------------------------------------------------------

def test_burn_rate_and_runway():
    assert burn_rate(0, 10_000).runway_hours is None
    rate = burn_rate(2_400, 10_000)
    assert rate.per_hour == 100 and rate.runway_hours == 100.0
    assert burn_rate(2_400, -5).runway_hours == 0.0


# --- invariants (property-based) --------------------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("topup"), st.integers(1, 50_000)),
        st.tuples(st.just("reserve"), st.integers(-10, 60_000)),
        st.tuples(st.just("debit"), st.integers(1, 20_000), st.integers(0, 3)),
        st.tuples(st.just("credit"), st.integers(1, 5_000)),
        st.tuples(st.just("release"), st.integers(0, 20)),
        st.tuples(st.just("confirm"), st.integers(0, 20)),
        st.tuples(st.just("expire"), st.integers(0, 3)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=operations, mode=st.sampled_from(list(BillingMode)), credit=st.integers(0, 50_000))
def test_balance_is_sum_of_ledger_and_held_is_sum_of_open_holds(ops, mode, credit):
    w = Wallet(uuid4(), uuid4(), "ZAR", mode,
               credit_limit=credit if mode is BillingMode.INVOICE else 0)
    vms = [uuid4() for _ in range(4)]
    holds = []
    for n, op in enumerate(ops):
        available_before = w.available
        match op:
            case ("topup", amount):
                w.top_up(payment_id=str(n), amount=amount, currency="ZAR", at=T0,
                         max_amount=MAX_TOPUP)
            case ("reserve", amount):
                hold = w.reserve(request_id=uuid4(), vm_id=vms[n % 4], hold_id=uuid4(),
                                 amount=amount, currency="ZAR", purpose="create", at=T0, ttl=TTL)
                if hold is not None:
                    assert 0 < amount <= available_before  # never reserves unfunded requests
                    holds.append(hold)
                else:
                    assert amount <= 0 or amount > available_before
            case ("debit", amount, vm):
                w.debit_usage(amount=amount, key=str(n), at=T0, vm_id=vms[vm], holds=holds)
            case ("credit", amount):
                w.credit_usage(amount=amount, key=str(n), at=T0, vm_id=None)
            case ("release", index) if holds:
                w.release(holds[index % len(holds)], T0)
            case ("confirm", index) if holds:
                w.confirm(holds[index % len(holds)])
            case ("expire", hours):
                for hold in holds:
                    w.expire(hold, T0 + timedelta(hours=hours))
        assert w.balance == sum(e.amount for e in w.entries)
        assert w.held == sum(h.remaining for h in holds if h.status.is_open)
        assert w.held >= 0
        assert all(h.remaining >= 0 for h in holds)
        for e, running in zip(w.entries, _running_sums(w.entries), strict=True):
            assert e.balance_after == running
    assert all(e.kind in EntryKind for e in w.entries)


def _running_sums(entries):
    total = 0
    for e in entries:
        total += e.amount
        yield total


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.integers(1, 1_000_000), min_size=1, max_size=4),
       credit=st.integers(0, 1_000_000),
       refunds=st.lists(st.tuples(st.integers(-1, 3), st.integers(1, 500_000)), max_size=10))
def test_refunds_never_exceed_95_percent_of_what_is_still_charged(parts, credit, refunds):
    vms = [uuid4() for _ in parts]
    credit = min(credit, parts[0])
    hour = [HourEntry(1, True, sum(parts), dict(zip(vms, parts, strict=True)))]
    if credit:
        hour.append(HourEntry(2, False, credit, {vms[0]: credit}))
    w = wallet(0)
    done: list[PastRefund] = []
    for which, amount in refunds:
        vm = vms[which] if 0 <= which < len(vms) else None
        try:
            entry = w.refund(refund_id=uuid4(), charge=Refundable(1, -sum(parts), hour, done),
                             amount=amount, at=T0, vm_id=vm)
        except WalletError:
            continue
        done.append(PastRefund(1, entry.vm_id, amount))
        still = sum(parts) - credit
        assert sum(r.amount for r in done) <= still * 95 // 100
        for n, v in enumerate(vms):
            vm_still = parts[n] - (credit if n == 0 else 0)
            assert sum(r.amount for r in done if r.vm_id == v) <= vm_still * 95 // 100
    assert w.balance == sum(r.amount for r in done) == sum(e.amount for e in w.entries)


# --- usage entries: one ledger row for many VMs --------------------------------------------

def test_a_usage_entry_is_one_ledger_row_that_draws_each_vms_holds_by_its_part():
    w = wallet(10_000)
    a = w.reserve(request_id=uuid4(), vm_id=VM_A, hold_id=uuid4(), amount=300, currency="ZAR",
                  purpose="create", at=T0, ttl=TTL)
    b = w.reserve(request_id=uuid4(), vm_id=VM_B, hold_id=uuid4(), amount=1_000,
                  currency="ZAR", purpose="create", at=T0, ttl=TTL)
    assert a and b
    vm_c = uuid4()  # no hold: its usage draws nothing
    parts = UsageParts((VM_A, VM_B, vm_c), (uuid4(), uuid4(), uuid4()), (500, 200, 41))
    entry = w.debit_usage(amount=741, key="usage:e1", at=T0, vm_id=None, holds=[a, b],
                          parts=parts)
    assert len(w.entries) == 2 and entry.amount == -741 and entry.parts == parts
    assert (a.remaining, a.status) == (0, HoldStatus.CONSUMED)  # drew 300 of A's 500
    assert b.remaining == 800 and entry.hold_drawn == 500
    assert w.held == 800 and w.balance == 10_000 - 741
    assert w.balance == sum(e.amount for e in w.entries)


def test_a_usage_entry_never_draws_another_wallets_hold():
    w, other = wallet(1_000), wallet(1_000)
    hold = other.reserve(request_id=uuid4(), vm_id=VM_A, hold_id=uuid4(), amount=500,
                         currency="ZAR", purpose="create", at=T0, ttl=TTL)
    assert hold is not None
    w.debit_usage(amount=100, key="u", at=T0, vm_id=None, holds={VM_A: [hold]},
                  parts=UsageParts((VM_A,), (uuid4(),), (100,)))
    assert hold.remaining == 500 and w.held == 0


@pytest.mark.parametrize("parts, message", [
    (((VM_A,), (), (100,)), "one VM id, line id and amount per VM"),
    (((), (), ()), "one VM id, line id and amount per VM"),
    (((VM_A,), (uuid4(),), (0,)), "must be positive"),
])
def test_usage_parts_must_be_one_per_vm_and_positive(parts, message):
    with pytest.raises(WalletError, match=message):
        UsageParts(*parts)


def test_a_usage_entry_whose_parts_do_not_add_up_is_refused():
    w = wallet(1_000)
    with pytest.raises(WalletError, match="add up to 100, not 101"):
        w.debit_usage(amount=101, key="u", at=T0, vm_id=None, holds=[],
                      parts=UsageParts((VM_A,), (uuid4(),), (100,)))
    with pytest.raises(WalletError, match="add up to 100, not 99"):
        w.credit_usage(amount=99, key="u", at=T0, vm_id=None,
                       parts=UsageParts((VM_A,), (uuid4(),), (100,)))
    assert not w.entries[1:] and w.balance == 1_000


def test_usage_descriptions_read_as_people_read_them():
    at = datetime(2026, 1, 5, 14, tzinfo=UTC)
    assert usage_description("debit", at, 0, 12, 984, "ZAR") == \
        "Usage 14:00–15:00 UTC · 12 VMs · R9.84"
    assert usage_description("credit", at.replace(hour=23), 2, 1, 41, "ZAR") == \
        "Usage correction (revision 2) 23:00–00:00 UTC · 1 VM · R0.41"
