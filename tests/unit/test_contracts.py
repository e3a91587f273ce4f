import json
from datetime import UTC, datetime
from uuid import uuid4

import pytest
from aiokafka.structs import ConsumerRecord
from pydantic import TypeAdapter, ValidationError

from shared.consumer import dead_letter, parse_records
from shared.contracts.base import deterministic_id
from shared.contracts.clock import ClockTick
from shared.contracts.metering import HourlyUsage
from shared.contracts.vm import VmSpec
from shared.contracts.wallet import (
    MAX_CHARGES_PER_MESSAGE,
    BillingCharge,
    ChargeWallet,
    DebitWallet,
    FundsReserved,
    ReserveFunds,
    UsageCharge,
    WalletDecision,
    WalletOpened,
)
from shared.money import MAX_AMOUNT_MINOR, MoneyModel
from shared.settings import Settings


def reserve() -> ReserveFunds:
    return ReserveFunds(request_id=uuid4(), wallet_id=uuid4(), organisation_id=uuid4(),
                        vm_id=uuid4(), amount=MoneyModel(amount_minor=15_000))


def test_envelope_round_trips_with_type_and_version():
    message = reserve()
    again = ReserveFunds.model_validate_json(message.model_dump_json())
    assert again == message
    assert (again.type, again.version) == ("wallet.reserve_funds", 1)


def test_caused_message_carries_correlation_and_causation():
    cause = reserve()
    effect = cause.caused(FundsReserved, request_id=cause.request_id, wallet_id=cause.wallet_id,
                          vm_id=cause.vm_id, hold_id=uuid4(), amount=cause.amount,
                          available_after=cause.amount, expires_at=datetime.now(UTC))
    assert effect.causation_id == cause.event_id
    assert effect.correlation_id == cause.event_id
    grandchild = effect.caused(FundsReserved, **effect.model_dump(
        exclude={"event_id", "correlation_id", "causation_id", "type", "version"}))
    assert grandchild.correlation_id == cause.event_id


def test_unknown_fields_and_naive_times_are_refused():
    data = reserve().model_dump(mode="json")
    with pytest.raises(ValidationError):
        ReserveFunds.model_validate({**data, "surprise": 1})
    with pytest.raises(ValidationError):
        ReserveFunds.model_validate({**data, "occurred_at": "2026-01-01T00:00:00"})


def test_discriminated_union_picks_the_model_by_type():
    adapter = TypeAdapter(WalletDecision)
    reserved = reserve().caused(FundsReserved, request_id=uuid4(), wallet_id=uuid4(),
                                vm_id=uuid4(), hold_id=uuid4(),
                                amount=MoneyModel(amount_minor=1),
                                available_after=MoneyModel(amount_minor=0),
                                expires_at=datetime.now(UTC))
    assert isinstance(adapter.validate_json(reserved.model_dump_json()), FundsReserved)


def test_charge_messages_need_positive_charges_and_a_bounded_count():
    def charge(amount: int) -> dict[str, object]:
        return {"line_id": str(uuid4()), "kind": "debit", "amount_minor": amount,
                "period_start": "2026-01-01T00:00:00Z", "description": "usage"}

    def message(*charges: dict[str, object]) -> str:
        return json.dumps({"type": "billing.charge_wallet", "wallet_id": str(uuid4()),
                           "currency": "ZAR", "occurred_at": "2026-01-01T01:00:00Z",
                           "charges": list(charges)})

    adapter = TypeAdapter(BillingCharge)
    parsed = adapter.validate_json(message(charge(41), charge(7)))
    assert isinstance(parsed, ChargeWallet)
    assert [c.amount_minor for c in parsed.charges] == [41, 7]
    for bad in (message(charge(0)), message(charge(-41)), message(charge(41) | {"kind": "x"}),
                message(*[charge(1)] * (MAX_CHARGES_PER_MESSAGE + 1))):
        with pytest.raises(ValidationError):
            adapter.validate_json(bad)
    with pytest.raises(ValidationError):
        ChargeWallet(wallet_id=uuid4(), currency="ZAR", charges=[])
    assert UsageCharge(line_id=uuid4(), kind="credit", amount_minor=5,
                       period_start=datetime(2026, 1, 1, tzinfo=UTC), description="x").vm_id is None


def test_deterministic_ids_and_ticks():
    at = datetime(2026, 1, 1, 5, tzinfo=UTC)
    assert deterministic_id("a", 1) == deterministic_id("a", 1) != deterministic_id("a", 2)
    assert ClockTick.at_time(at).event_id == ClockTick.at_time(at).event_id


def test_tier_specs_must_match_their_shape():
    assert VmSpec.of_tier("medium").vcpu == 2
    with pytest.raises(ValidationError, match="tier small is 1 vCPU / 2 GB"):
        VmSpec(tier="small", vcpu=4, ram_gb=2)
    with pytest.raises(ValidationError):
        VmSpec(vcpu=0, ram_gb=2)


def record(value: bytes, offset: int = 0) -> ConsumerRecord:
    return ConsumerRecord("topic-a", 3, offset, 0, 0, b"key", value, None, len(value), 3, [])


def test_parse_records_separates_good_from_bad_with_reasons():
    good_value = reserve().model_dump_json().encode()
    good, bad = parse_records([record(good_value), record(b"nope", 1), record(b"{}", 2)],
                              TypeAdapter(ReserveFunds))
    assert len(good) == 1 and good[0].record.offset == 0
    assert [b.record.offset for b in bad] == [1, 2]
    assert bad[0].reason.startswith("invalid message")
    assert "request_id" in bad[1].reason

    letter = dead_letter(Settings(topic_prefix="x."), "wallet", bad[0].record, bad[0].reason)
    assert letter.topic == "x.deadletter" and letter.key == b"topic-a"
    assert b'"source_offset":1' in letter.value and b'"payload":"nope"' in letter.value
    # a redelivered record is the same letter (same id); another record is another letter
    again = dead_letter(Settings(topic_prefix="x."), "wallet", bad[0].record, bad[0].reason)
    other = dead_letter(Settings(topic_prefix="x."), "wallet", bad[1].record, bad[1].reason)
    ids = [json.loads(x.value)["event_id"] for x in (letter, again, other)]
    assert ids[0] == ids[1] != ids[2]


def test_a_wallet_opened_in_an_unknown_currency_is_invalid():
    fields = dict(wallet_id=uuid4(), organisation_id=uuid4(), organisation_name="o",
                  organisation_kind="customer", billing_mode="PAYG")
    assert WalletOpened(currency="ZAR", **fields).currency == "ZAR"
    with pytest.raises(ValidationError):
        WalletOpened(currency="EURO", **fields)


def test_times_are_parsed_as_utc_and_a_time_without_one_is_invalid():
    at_two = ClockTick.model_validate_json(b'{"at": "2026-01-01T02:00:00+02:00"}')
    assert at_two.at == datetime(2026, 1, 1, tzinfo=UTC) and at_two.at.tzinfo is UTC
    with pytest.raises(ValidationError, match="range of UTC times"):
        ClockTick.model_validate_json(b'{"at": "0001-01-01T00:30:00+01:00"}')
    with pytest.raises(ValidationError, match="timezone"):
        ClockTick.model_validate_json(b'{"at": "2026-01-01T02:00:00"}')


def test_stored_text_refuses_nul_and_lone_surrogates_and_amounts_are_bounded():
    fields = dict(wallet_id=uuid4(), organisation_id=uuid4(), organisation_kind="customer",
                  currency="ZAR", billing_mode="PAYG")
    assert WalletOpened(organisation_name="Acme (Pty) Ltd ✓", **fields)
    for bad in ("a\x00b", "\ud800"):
        with pytest.raises(ValidationError, match=r"NUL|surrogate"):
            WalletOpened(organisation_name=bad, **fields)
    # an amount to move is bounded; a balance or total only by bigint
    debit = dict(debit_id=uuid4(), wallet_id=uuid4())
    assert DebitWallet(amount=MoneyModel(amount_minor=MAX_AMOUNT_MINOR), **debit)
    with pytest.raises(ValidationError, match="at most"):
        DebitWallet(amount=MoneyModel(amount_minor=MAX_AMOUNT_MINOR + 1), **debit)
    assert MoneyModel(amount_minor=2 * MAX_AMOUNT_MINOR).amount_minor == 2 * MAX_AMOUNT_MINOR
    for beyond in (2**63, -(2**63)):
        with pytest.raises(ValidationError):
            MoneyModel(amount_minor=beyond)


def test_a_usage_revision_past_a_stored_integer_is_invalid():
    fields = dict(usage_id=uuid4(), vm_id=uuid4(), wallet_id=uuid4(), organisation_id=uuid4(),
                  hour_start=datetime(2026, 1, 1, tzinfo=UTC), seconds=0, segments=[])
    assert HourlyUsage(revision=2**31 - 1, **fields).revision == 2**31 - 1
    with pytest.raises(ValidationError):
        HourlyUsage(revision=2**31, **fields)
