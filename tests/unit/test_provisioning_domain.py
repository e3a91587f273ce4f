"""The provisioning domain: sizes, prices, the saga's transitions, timeouts, suspension."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.provisioning.domain import (
    AskForFunds,
    Conflict,
    CreateVmCommand,
    Decommissioned,
    DeleteVmCommand,
    Fact,
    InvalidRequest,
    Organisation,
    Outcome,
    PowerOffCommand,
    PowerOnCommand,
    PowerState,
    RequestStatus,
    ResizeVmCommand,
    Vm,
    VmRequest,
    new_create_request,
    new_resize_request,
    price_create,
    price_resize,
    spec_of,
    vm_from_created,
)
from shared.contracts.vm import VmSpec
from shared.pricing import DEFAULT_BOOK, DEFAULT_RATE_CARD, RateCard

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FUNDS_TIMEOUT = timedelta(hours=1)
VCENTER_TIMEOUT = timedelta(minutes=15)
MEDIUM = VmSpec.of_tier("medium")
SMALL = VmSpec.of_tier("small")


def org(currency: str = "ZAR") -> Organisation:
    return Organisation(uuid4(), uuid4(), currency, "PAYG")


def create(spec: VmSpec = MEDIUM, name: str = "web", at: datetime = T0,
           organisation: Organisation | None = None) -> tuple[VmRequest, list[Fact]]:
    return new_create_request(request_id=uuid4(), idempotency_key="k", vm_id=uuid4(),
                              organisation=organisation or org(), name=name, spec=spec,
                              book=DEFAULT_BOOK, now=at, funds_timeout=FUNDS_TIMEOUT)


def vm(spec: VmSpec = SMALL, state: PowerState = PowerState.RUNNING) -> Vm:
    return Vm(uuid4(), uuid4(), uuid4(), "app", spec, state, T0, T0)


# --- sizes and prices ----------------------------------------------------------------------

def test_spec_of_tier_and_custom_sizes():
    assert spec_of("large", None, None, None) == VmSpec(tier="large", vcpu=4, ram_gb=8)
    assert spec_of("small", 1, 2, 80).disk_gb == 80
    assert spec_of(None, 3, 6, None) == VmSpec(vcpu=3, ram_gb=6, disk_gb=50)


@pytest.mark.parametrize(("tier", "vcpu", "ram", "disk", "reason"), [
    ("huge", None, None, None, "unknown tier 'huge'; tiers: small, medium, large, enterprise"),
    ("small", 2, None, None, "tier small is 1 vCPU / 2 GB"),
    (None, 2, None, None, "a custom size needs vcpu and ram_gb"),
    (None, 0, 4, None, "vcpu"),
    (None, 2, 4, 5, "disk_gb"),
    (None, 500, 4, None, "vcpu"),
])
def test_spec_of_refuses_invalid_sizes_with_a_reason(tier, vcpu, ram, disk, reason):
    with pytest.raises(InvalidRequest, match=reason):
        spec_of(tier, vcpu, ram, disk)


@pytest.mark.parametrize(("tier", "monthly"), [
    ("small", 15_000), ("medium", 30_000), ("large", 60_000), ("enterprise", 120_000)])
def test_a_new_vm_holds_its_tier_price_for_a_month(tier, monthly):
    price = price_create(DEFAULT_BOOK, VmSpec.of_tier(tier), T0, "ZAR")
    assert (price.amount, price.currency, price.rate_card_version) == (monthly, "ZAR", "2025-01")


def test_custom_size_is_priced_per_resource_hour_times_730():
    spec = VmSpec(vcpu=2, ram_gb=4, disk_gb=100)
    assert price_create(DEFAULT_BOOK, spec, T0, "ZAR").amount == (2 * 12 + 4 * 4 + 2) * 730


def test_price_needs_a_card_in_the_wallets_currency_and_in_effect():
    with pytest.raises(InvalidRequest, match="no price for the organisation's USD wallet: "
                                             "no rate card in USD in effect"):
        price_create(DEFAULT_BOOK, MEDIUM, T0, "USD")
    with pytest.raises(InvalidRequest, match="no rate card in ZAR in effect"):
        price_create(DEFAULT_BOOK, MEDIUM, datetime(2020, 1, 1, tzinfo=UTC), "ZAR")


def test_a_wallet_in_another_currency_is_priced_with_its_own_card_from_its_start():
    usd_from = T0 + timedelta(days=3)
    usd = RateCard("usd-1", usd_from, "USD", {"small": 900, "medium": 1_800, "large": 3_600,
                                             "enterprise": 7_200},
                   Fraction(1), Fraction(1, 3), Fraction(1, 1000))
    book = DEFAULT_BOOK.with_card(usd)
    with pytest.raises(InvalidRequest, match="no rate card in USD"):
        price_create(book, MEDIUM, usd_from - timedelta(seconds=1), "USD")
    price = price_create(book, MEDIUM, usd_from, "USD")
    assert (price.amount, price.currency, price.rate_card_version) == (1_800, "USD", "usd-1")
    # a custom size: (2 x 1 + 4 x 1/3 + 100 x 1/1000) cents x 730 = 2,506.33..., rounded up
    custom = VmSpec(vcpu=2, ram_gb=4, disk_gb=100)
    assert price_create(book, custom, usd_from, "USD").amount == 2_507
    resize = price_resize(book, MEDIUM, VmSpec.of_tier("large"), usd_from, "USD")
    assert (resize.amount, resize.currency) == (1_800, "USD")
    # the ZAR wallets keep the ZAR card
    assert price_create(book, MEDIUM, usd_from, "ZAR").amount == 30_000


def test_a_later_rate_card_prices_later_requests_only():
    later = RateCard(version="2026-06", effective_from=datetime(2026, 6, 1, tzinfo=UTC),
                     currency="ZAR", tier_monthly_minor={**DEFAULT_RATE_CARD.tier_monthly_minor,
                                                         "medium": 33_000},
                     vcpu_hour=Fraction(13), ram_gb_hour=Fraction(4),
                     disk_gb_hour=Fraction(1, 50))
    book = DEFAULT_BOOK.with_card(later)
    before = price_create(book, MEDIUM, datetime(2026, 5, 31, tzinfo=UTC), "ZAR")
    after = price_create(book, MEDIUM, datetime(2026, 6, 1, tzinfo=UTC), "ZAR")
    assert (before.amount, before.rate_card_version) == (30_000, "2025-01")
    assert (after.amount, after.rate_card_version) == (33_000, "2026-06")


specs = st.one_of(
    st.sampled_from(["small", "medium", "large", "enterprise"]).map(VmSpec.of_tier),
    st.builds(VmSpec, vcpu=st.integers(1, 128), ram_gb=st.integers(1, 2048),
              disk_gb=st.integers(10, 65536)),
)


@given(specs, specs)
def test_resize_holds_exactly_the_monthly_increase(current, new):
    up = price_resize(DEFAULT_BOOK, current, new, T0, "ZAR").amount
    down = price_resize(DEFAULT_BOOK, new, current, T0, "ZAR").amount
    monthly_new = DEFAULT_BOOK.monthly_requirement(new, T0).amount
    monthly_current = DEFAULT_BOOK.monthly_requirement(current, T0).amount
    assert up == max(monthly_new - monthly_current, 0)
    assert up >= 0 and down >= 0 and min(up, down) == 0
    assert up + down == abs(monthly_new - monthly_current)


# --- the create saga ------------------------------------------------------------------------

def test_a_new_request_asks_the_wallet_for_a_month_and_waits_with_a_deadline():
    request, facts = create()
    assert facts == [AskForFunds(request)]
    assert request.status is RequestStatus.AWAITING_FUNDS
    assert request.amount == 30_000 and request.deadline == T0 + FUNDS_TIMEOUT


def test_reserved_funds_send_create_vm_and_start_the_vcenter_timeout():
    request, _ = create()
    hold = uuid4()
    clock = T0 + timedelta(minutes=3)
    facts = request.funds_reserved(hold, clock, VCENTER_TIMEOUT)
    assert facts == [CreateVmCommand(request, clock)]
    assert request.status is RequestStatus.AWAITING_VCENTER and request.hold_id == hold
    assert request.deadline == clock + VCENTER_TIMEOUT
    # A clock behind the request's own time never moves the request back in time.
    other, _ = create()
    other.funds_reserved(hold, T0 - timedelta(days=1), VCENTER_TIMEOUT)
    assert other.deadline == T0 + VCENTER_TIMEOUT


def test_vcenter_is_given_up_on_by_the_time_the_hold_expires():
    request, _ = create()
    late = T0 + timedelta(minutes=55)  # the decision came late: the hold expires at T0 + 1 h
    request.funds_reserved(uuid4(), late, VCENTER_TIMEOUT, hold_expires_at=T0 + timedelta(hours=1))
    assert request.deadline == T0 + timedelta(hours=1) < late + VCENTER_TIMEOUT
    request.time_out(T0 + timedelta(hours=1))
    assert request.status is RequestStatus.FAILED
    assert request.vm_created(T0 + timedelta(hours=1, minutes=1)) == [
        DeleteVmCommand(request.vm_id, T0 + timedelta(hours=1, minutes=1))]
    early, _ = create()
    early.funds_reserved(uuid4(), T0, VCENTER_TIMEOUT, hold_expires_at=T0 + timedelta(hours=1))
    assert early.deadline == T0 + VCENTER_TIMEOUT
    too_late, _ = create()
    expired_at = T0 + timedelta(hours=1)
    facts = too_late.funds_reserved(uuid4(), expired_at, VCENTER_TIMEOUT,
                                    hold_expires_at=expired_at)
    assert facts == [Outcome("failed", too_late, expired_at)]  # the hold goes back, no VM
    assert too_late.status is RequestStatus.FAILED and "hold expired" in (too_late.reason or "")


def test_created_vm_succeeds_and_keeps_the_hold():
    request, _ = create()
    request.funds_reserved(uuid4(), None, VCENTER_TIMEOUT)
    at = T0 + timedelta(seconds=30)
    assert request.vm_created(at) == [Outcome("succeeded", request, at)]
    assert request.status is RequestStatus.SUCCEEDED and request.deadline is None
    assert request.vm_created(at) == []  # a repeat changes nothing


def test_vcenter_failure_fails_and_releases():
    request, _ = create()
    request.funds_reserved(uuid4(), None, VCENTER_TIMEOUT)
    facts = request.vcenter_failed("no capacity", T0)
    assert facts == [Outcome("failed", request, T0)]
    assert request.reason == "vcenter: no capacity"


def test_rejection_ends_the_request_with_the_wallets_reason():
    request, _ = create()
    assert request.funds_rejected("insufficient_funds", "available 5 < required 9", T0) == []
    assert request.status is RequestStatus.REJECTED
    assert request.reason == "insufficient_funds: available 5 < required 9"
    assert request.funds_reserved(uuid4(), None, VCENTER_TIMEOUT) == []


def test_timeouts_fire_at_the_deadline_not_before():
    request, _ = create()
    request.funds_reserved(uuid4(), T0, VCENTER_TIMEOUT)
    deadline = T0 + VCENTER_TIMEOUT
    assert request.time_out(deadline - timedelta(microseconds=1)) == []
    assert request.time_out(deadline) == [Outcome("failed", request, deadline)]
    assert request.reason is not None and "no answer from vCenter" in request.reason
    assert request.time_out(deadline + timedelta(hours=1)) == []


def test_no_wallet_decision_times_out_too_and_a_late_hold_is_released():
    request, _ = create()
    request.time_out(T0 + FUNDS_TIMEOUT)
    assert request.status is RequestStatus.FAILED
    assert request.reason is not None and "no answer from the wallet" in request.reason
    facts = request.funds_reserved(uuid4(), None, VCENTER_TIMEOUT)
    assert [f.kind for f in facts if isinstance(f, Outcome)] == ["failed"]
    assert request.status is RequestStatus.FAILED


def test_cancel_releases_and_a_late_vm_is_deleted():
    request, _ = create()
    request.funds_reserved(uuid4(), None, VCENTER_TIMEOUT)
    assert request.cancel(T0) == [Outcome("cancelled", request, T0)]
    assert request.cancel(T0) == []  # cancelling twice is harmless
    late = T0 + timedelta(minutes=1)
    assert request.vm_created(late) == [DeleteVmCommand(request.vm_id, late)]
    assert request.status is RequestStatus.CANCELLED


def test_cancel_before_the_wallet_answers_releases_the_late_hold():
    request, _ = create()
    request.cancel(T0)
    facts = request.funds_reserved(uuid4(), None, VCENTER_TIMEOUT)
    assert [type(f) for f in facts] == [Outcome] and facts[0].kind == "cancelled"  # type: ignore[union-attr]


def test_a_finished_request_cannot_be_cancelled():
    request, _ = create()
    request.funds_reserved(uuid4(), None, VCENTER_TIMEOUT)
    request.vm_created(T0)
    with pytest.raises(Conflict, match="succeeded"):
        request.cancel(T0)


def test_same_intent_compares_name_and_size():
    request, _ = create(name="web")
    assert request.same_intent("web", MEDIUM)
    assert not request.same_intent("web", SMALL)
    assert not request.same_intent("db", MEDIUM)


def test_unknown_currency_is_refused_at_intake():
    with pytest.raises(InvalidRequest):
        create(organisation=org("EUR"))


# Property: whatever order and repetition the saga's messages arrive in, no VM exists
# without funds held for it, no hold is left behind, and the end state never changes.

Step = tuple[str, int]
steps = st.lists(st.tuples(st.sampled_from(
    ["decision", "created", "create_failed", "cancel", "tick"]), st.integers(0, 3600)),
    max_size=12)


@settings(max_examples=400)
@given(steps, st.booleans())
def test_saga_never_leaks_a_vm_or_a_hold(sequence: list[Step], funds_available: bool):
    request, facts = create()
    vm_created = False
    reserved = False
    reserved_from = 0  # facts from here on came after the wallet made the hold
    ended: RequestStatus | None = None
    for step, seconds in sequence:
        now = T0 + timedelta(seconds=seconds * 2)
        if step == "decision":  # the wallet decides once per request (maybe redelivered)
            if funds_available:
                if not reserved:
                    reserved, reserved_from = True, len(facts)
                facts += request.funds_reserved(uuid4(), now, VCENTER_TIMEOUT)
            else:
                facts += request.funds_rejected("insufficient_funds", "no", now)
        elif step in ("created", "create_failed"):
            if not any(isinstance(f, CreateVmCommand) for f in facts):
                continue  # vCenter answers only commands it was sent
            if step == "created":
                vm_created = True
                facts += request.vm_created(now)
            else:
                facts += request.vcenter_failed("boom", now)
        elif step == "cancel":
            try:
                facts += request.cancel(now)
            except Conflict:
                assert not request.status.is_open
        else:
            facts += request.time_out(now)
        if ended is not None:
            assert request.status is ended, "a finished request never changes"
        elif not request.status.is_open:
            ended = request.status

    creates = [f for f in facts if isinstance(f, CreateVmCommand)]
    outcomes = {f.kind for f in facts if isinstance(f, Outcome)}
    deletes = [f for f in facts if isinstance(f, DeleteVmCommand)]
    assert len(creates) <= 1
    assert len(outcomes) <= 1, "a hold is either kept or released, never both"
    if creates:
        assert reserved, "no CreateVm without funds reserved"
    if request.status is RequestStatus.SUCCEEDED:
        assert vm_created and outcomes == {"succeeded"} and not deletes
    if reserved and request.status in (RequestStatus.FAILED, RequestStatus.CANCELLED):
        assert any(isinstance(f, Outcome) for f in facts[reserved_from:]), "the hold goes back"
    if vm_created and request.status is not RequestStatus.SUCCEEDED:
        assert deletes, "a VM whose request ended without it is deleted"


# --- resize ---------------------------------------------------------------------------------

def resize(current: Vm, spec: VmSpec, open_requests: list[VmRequest] | None = None,
           now: datetime = T0) -> tuple[VmRequest, list[Fact]]:
    return new_resize_request(request_id=uuid4(), idempotency_key=None, organisation=org(),
                              vm=current, spec=spec, open_requests=open_requests or [],
                              book=DEFAULT_BOOK, now=now, funds_timeout=FUNDS_TIMEOUT,
                              vcenter_timeout=VCENTER_TIMEOUT)


def test_a_bigger_size_asks_for_the_difference_first():
    running = vm(SMALL)
    request, facts = resize(running, MEDIUM)
    assert facts == [AskForFunds(request)] and request.amount == 15_000
    assert request.previous_spec == SMALL and request.vm_id == running.vm_id
    facts = request.funds_reserved(uuid4(), T0, VCENTER_TIMEOUT)
    assert facts == [ResizeVmCommand(running.vm_id, request.request_id, MEDIUM, T0,
                                     request.request_id)]
    assert request.vm_resized(T0) == [Outcome("succeeded", request, T0)]


def test_a_smaller_size_goes_straight_to_vcenter_with_no_hold_or_outcome():
    request, facts = resize(vm(MEDIUM), SMALL)
    assert request.amount == 0 and request.status is RequestStatus.AWAITING_VCENTER
    assert [type(f) for f in facts] == [ResizeVmCommand]
    assert request.deadline == T0 + VCENTER_TIMEOUT
    assert request.vm_resized(T0) == []
    assert request.status is RequestStatus.SUCCEEDED


def test_resize_refusals():
    with pytest.raises(InvalidRequest, match="already has this size"):
        resize(vm(SMALL), SMALL)
    with pytest.raises(Conflict, match="deleted"):
        resize(vm(SMALL, PowerState.DELETED), MEDIUM)
    pending, _ = resize(vm(SMALL), MEDIUM)
    with pytest.raises(Conflict, match="in progress"):
        resize(vm(SMALL), MEDIUM, [pending])


def test_a_resize_vcenter_made_after_we_gave_up_is_reverted():
    running = vm(SMALL)
    request, _ = resize(running, MEDIUM)
    request.funds_reserved(uuid4(), T0, VCENTER_TIMEOUT)
    request.time_out(T0 + VCENTER_TIMEOUT)
    (revert,) = request.vm_resized(T0 + VCENTER_TIMEOUT)
    assert isinstance(revert, ResizeVmCommand) and revert.spec == SMALL
    assert revert.request_id != request.request_id
    # Until the revert lands the VM is medium, paid as small: no resize priced from medium.
    running.resized(MEDIUM, T0 + VCENTER_TIMEOUT)
    with pytest.raises(Conflict, match="resized back"):
        resize(running, SMALL, [request])
    # a revert never heard of within vCenter's timeout is taken as lost: no lock-out
    assert resize(running, SMALL, [request], now=T0 + 2 * VCENTER_TIMEOUT)[0].amount == 0
    running.resized(SMALL, T0 + VCENTER_TIMEOUT)  # the revert landed
    later, _ = resize(running, MEDIUM, [request])
    assert later.amount == 15_000  # medium's month less small's


# --- VMs and suspension -----------------------------------------------------------------------

def test_vm_created_for_a_live_request_stays_and_for_an_ended_one_is_deleted():
    request, _ = create()
    request.funds_reserved(uuid4(), T0, VCENTER_TIMEOUT)
    made, facts = vm_from_created(vm_id=request.vm_id, organisation_id=request.organisation_id,
                                  wallet_id=request.wallet_id, spec=MEDIUM, request=request,
                                  now=T0)
    assert made.power_state is PowerState.POWERED_OFF and made.name == "web"
    assert [type(f) for f in facts] == [Outcome]
    cancelled, _ = create()
    cancelled.cancel(T0)
    doomed, facts = vm_from_created(vm_id=cancelled.vm_id, spec=MEDIUM, request=cancelled,
                                    organisation_id=cancelled.organisation_id,
                                    wallet_id=cancelled.wallet_id, now=T0)
    assert doomed.power_state is PowerState.DELETING
    assert facts == [DeleteVmCommand(cancelled.vm_id, T0)]


def test_depleted_suspends_running_vms_only_and_restored_resumes_only_those():
    running, stopped, gone = vm(), vm(state=PowerState.POWERED_OFF), vm(state=PowerState.DELETED)
    organisation = org()
    facts = organisation.funds_depleted([running, stopped, gone], T0)
    assert facts == [PowerOffCommand(running.vm_id, T0)] and organisation.suspended
    assert organisation.funds_depleted([running], T0) == []  # already suspended
    running.powered_off(T0)
    facts = organisation.funds_restored([running, stopped, gone], T0)
    assert facts == [PowerOnCommand(running.vm_id, T0)] and not organisation.suspended
    assert not running.suspended_for_funds and not stopped.suspended_for_funds


def test_a_vm_powering_on_while_its_organisation_is_suspended_is_powered_off():
    late = vm(state=PowerState.POWERED_OFF)
    assert late.powered_on(T0, organisation_suspended=True) == [PowerOffCommand(late.vm_id, T0)]
    assert late.suspended_for_funds
    assert late.powered_on(T0, organisation_suspended=True) == []
    assert late.resume_after_funds(T0) == [PowerOnCommand(late.vm_id, T0)]


def test_deletion_decommissions_once_and_ignores_later_power_events():
    current = vm()
    assert current.delete(T0) == [DeleteVmCommand(current.vm_id, T0)]
    assert current.delete(T0) == []
    assert current.deleted(T0) == [Decommissioned(current.vm_id, current.wallet_id, T0)]
    assert current.deleted(T0) == []
    assert current.powered_on(T0, organisation_suspended=False) == []
    assert current.power_state is PowerState.DELETED


def test_state_times_never_go_backwards():
    current = vm()
    current.powered_off(T0 + timedelta(hours=1))
    current.resized(MEDIUM, T0)
    assert current.updated_at == T0 + timedelta(hours=1)
