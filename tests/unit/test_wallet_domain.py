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
    LowBalance,
    Refunded,
    Rejected,
    Rejection,
    Reserved,
    ToppedUp,
    Wallet,
    WalletError,
    burn_rate,
    refund_cap,
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

def test_a_usage_charge_is_refundable_on_what_its_hour_still_costs():
    w = wallet(10_000)
    with pytest.raises(WalletError, match="after the hour's correction credits: cap 3800"):
        w.refund(refund_id=uuid4(), charge_entry_id=1, charge_amount=-10_000,
                 already_refunded=0, amount=3_801, at=T0, still_charged=4_000)
    w.refund(refund_id=uuid4(), charge_entry_id=1, charge_amount=-10_000, already_refunded=0,
             amount=3_800, at=T0, still_charged=4_000)
    with pytest.raises(WalletError, match="cap 0"):  # credited back in full
        w.refund(refund_id=uuid4(), charge_entry_id=2, charge_amount=-500, already_refunded=0,
                 amount=1, at=T0, still_charged=0)
    w.refund(refund_id=uuid4(), charge_entry_id=3, charge_amount=-1_000, already_refunded=0,
             amount=950, at=T0, still_charged=1_500)  # a later revision charged more


def test_the_refunds_of_one_vm_hour_stay_within_95_percent_of_what_it_still_costs():
    # debits 10,000 and 5,000 for one hour, then a 9,000 credit: 6,000 still charged
    w = wallet(20_000)
    w.refund(refund_id=uuid4(), charge_entry_id=1, charge_amount=-10_000, already_refunded=0,
             amount=5_700, at=T0, still_charged=6_000, hour_refunded=0)
    with pytest.raises(WalletError, match="what the VM hour still costs: cap 5700"):
        w.refund(refund_id=uuid4(), charge_entry_id=2, charge_amount=-5_000,
                 already_refunded=0, amount=1, at=T0, still_charged=6_000, hour_refunded=5_700)


def test_refund_capped_at_95_percent_cumulatively():
    w = wallet(10_000)
    charge = w.debit_usage(amount=1_000, key="d1", at=T0, vm_id=None, holds=[])
    assert refund_cap(1_000) == 950
    w.refund(refund_id=uuid4(), charge_entry_id=1, charge_amount=charge.amount,
             already_refunded=0, amount=600, at=T0)
    with pytest.raises(WalletError, match="95%"):
        w.refund(refund_id=uuid4(), charge_entry_id=1, charge_amount=charge.amount,
                 already_refunded=600, amount=351, at=T0)
    w.refund(refund_id=uuid4(), charge_entry_id=1, charge_amount=charge.amount,
             already_refunded=600, amount=350, at=T0)
    assert w.balance == 10_000 - 1_000 + 950
    assert len([f for f in w.take_facts() if isinstance(f, Refunded)]) == 2


def test_only_charges_can_be_refunded():
    w = wallet(10_000)
    with pytest.raises(WalletError, match="charge"):
        w.refund(refund_id=uuid4(), charge_entry_id=1, charge_amount=10_000,
                 already_refunded=0, amount=1, at=T0)


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
@given(charge=st.integers(1, 10_000_000), refunds=st.lists(st.integers(1, 5_000_000), max_size=8))
def test_refunds_never_exceed_the_cap(charge, refunds):
    w = wallet(0)
    entry = w.debit_usage(amount=charge, key="c", at=T0, vm_id=None, holds=[])
    refunded = 0
    for amount in refunds:
        try:
            w.refund(refund_id=uuid4(), charge_entry_id=1, charge_amount=entry.amount,
                     already_refunded=refunded, amount=amount, at=T0)
            refunded += amount
        except WalletError:
            pass
        assert refunded <= charge * 95 // 100
