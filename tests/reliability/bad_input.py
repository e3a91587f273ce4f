"""The bad records of the matrix: for every topic a service of ours consumes, from the
topic map and the contracts (so a new topic or message type gets its cases by itself),
plus money cases written for the topics that move money.

Each case says what must become of it: a dead letter from each consumer of the topic with
a reason (`DEAD_LETTER`), or (where the consumers' documented answer is not a letter)
what the case shows instead. Either way no balance, hold, ledger row or line changes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

from shared.asyncapi import TOPIC_MESSAGES
from shared.contracts.vm import VmSpec
from shared.contracts.wallet import MAX_CHARGES_PER_MESSAGE
from shared.money import MAX_AMOUNT_MINOR
from shared.topics import (
    ALL_TOPICS,
    BILLING_DEBITS,
    CLOCK_TICKS,
    METERING_USAGE,
    PORTAL_VM_REQUESTS,
    PROVISIONING_OUTCOMES,
    PROVISIONING_REQUESTS,
    VCENTER_EVENTS,
    WALLET_DECISIONS,
    WALLET_EVENTS,
    WALLET_TOPUPS,
)
from tests.consumed_types import CONSUMER_OF_ROLE, OUTSIDE, message_type

DEAD_LETTER = "dead letter"
# A reservation the wallet cannot grant is answered, not dead-lettered: provisioning waits
# for a decision on every request (FundsRejected with the reason, docs/architecture.md).
REJECTED = "funds rejected"
# An id (or idempotency key) consumed before, with other content: not a redelivery.
REUSED = "reused with other content"
# About something that does not exist: a dead letter or nothing, as the consumer documents;
# what the matrix asserts is that nothing changed and the consumer went on.
NOTHING_TO_ACT_ON = "nothing to act on"
OVERSIZED_BYTES = 700_000  # under the broker's 1 MB message limit, far over any real message


@dataclass(frozen=True)
class Case:
    topic: str  # unprefixed
    name: str
    value: bytes | None
    expect: str = DEAD_LETTER
    key: str | None = None
    reason_has: str = ""  # what the dead letter's reason (or the rejection) must say
    # (consumer, expect) where a consumer of the topic answers otherwise than `expect`
    expect_of: tuple[tuple[str, str], ...] = ()

    def expect_for(self, consumer: str) -> str:
        return dict(self.expect_of).get(consumer, self.expect)


def consumers_of(topic: str) -> set[str]:
    """The services of ours that consume `topic`, by the topic map."""
    [t] = [t for t in ALL_TOPICS if t.name == topic]
    return {CONSUMER_OF_ROLE[role] for role in t.consumers if role not in OUTSIDE}


def consumed_topic_names() -> list[str]:
    return sorted(t.name for t in ALL_TOPICS if consumers_of(t.name))


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()


def structural_cases() -> list[Case]:
    """Cases every consumed topic gets, whatever its messages."""
    cases: list[Case] = []
    for topic in consumed_topic_names():
        models = [t for t in ALL_TOPICS if t.name == topic]
        types = [(message_type(m), m.model_fields["version"].default)
                 for m in TOPIC_MESSAGES[models[0]]]
        first_type, first_version = types[0]
        cases += [
            Case(topic, "malformed JSON", b'{"type": "' + first_type.encode() + b'", ',
                 reason_has="invalid message"),
            Case(topic, "not an object", b"[1, 2, 3]", reason_has="invalid message"),
            # a tombstone: Kafka takes a null value only with a key
            Case(topic, "null record", None, key="tombstone", reason_has="invalid message"),
            Case(topic, "empty record", b"", reason_has="invalid message"),
            Case(topic, "not UTF-8", b'{"type": "\xff\xfe"}', reason_has="invalid message"),
            Case(topic, "unknown type", _json({"type": "no.such_type", "version": 1}),
                 reason_has="invalid message"),
            Case(topic, "oversized", _json({"type": first_type, "version": first_version,
                                            "padding": "x" * OVERSIZED_BYTES}),
                 reason_has="invalid message"),
        ]
        for message_name, version in types:
            cases += [
                Case(topic, f"{message_name}: wrong version",
                     _json({"type": message_name, "version": version + 98}),
                     reason_has="version"),
                Case(topic, f"{message_name}: missing fields",
                     _json({"type": message_name, "version": version}),
                     reason_has="Field required"),
            ]
    return cases


def _envelope(type_: str, **body: Any) -> dict[str, Any]:
    return {"event_id": str(uuid4()), "type": type_, "version": 1,
            "occurred_at": "2026-12-01T10:00:00Z", **body}


def money_cases(wallet_id: UUID, organisation_id: UUID, booked_debit: dict[str, Any],
                booked_topup: dict[str, Any]) -> list[Case]:
    """Amounts, currencies, unknown wallets and repeats with other content on the topics
    that move money; `booked_*` are messages booked before (their repeats' originals)."""
    w, unknown = str(wallet_id), str(uuid4())

    def debit(amount: Any, currency: str = "ZAR", wallet: str = w) -> bytes:
        return _json(_envelope("billing.debit_wallet", debit_id=str(uuid4()), wallet_id=wallet,
                               amount={"amount_minor": amount, "currency": currency}))

    def topup(amount: Any, currency: str = "ZAR", wallet: str = w) -> bytes:
        return _json(_envelope("wallet.top_up", payment_id=uuid4().hex, wallet_id=wallet,
                               amount={"amount_minor": amount, "currency": currency},
                               source="manual"))

    def reserve(amount: Any, currency: str = "ZAR", wallet: str = w) -> bytes:
        return _json(_envelope("wallet.reserve_funds", request_id=str(uuid4()),
                               wallet_id=wallet, organisation_id=str(organisation_id),
                               vm_id=str(uuid4()),
                               amount={"amount_minor": amount, "currency": currency}))

    def charge(amount: Any, kind: str = "debit") -> bytes:
        return _json(_envelope("billing.charge_wallet", wallet_id=w, currency="ZAR", charges=[
            {"line_id": str(uuid4()), "kind": kind, "vm_id": str(uuid4()),
             "amount_minor": amount, "period_start": "2026-12-01T10:00:00Z"}]))

    cases: list[Case] = []
    for topic, make, on_unknown in ((BILLING_DEBITS.name, debit, DEAD_LETTER),
                                    (WALLET_TOPUPS.name, topup, DEAD_LETTER),
                                    (PROVISIONING_REQUESTS.name, reserve, REJECTED)):
        # the wallet answers a reservation it can parse with a decision (invalid_amount)
        not_positive = REJECTED if topic == PROVISIONING_REQUESTS.name else DEAD_LETTER
        cases += [
            Case(topic, "negative amount", make(-500), key=w, expect=not_positive,
                 reason_has="amount"),
            Case(topic, "zero amount", make(0), key=w, expect=not_positive, reason_has="amount"),
            Case(topic, "huge amount", make(MAX_AMOUNT_MINOR + 1), key=w, reason_has="amount"),
            Case(topic, "amount as a float", make(12.5), key=w, reason_has="amount"),
            Case(topic, "amount as a string", make("500"), key=w, reason_has="amount"),
            Case(topic, "unknown currency", make(500, "XXX"), key=w, reason_has="currency"),
            Case(topic, "another currency than the wallet's", make(500, "USD"), key=w,
                 expect=DEAD_LETTER if topic != PROVISIONING_REQUESTS.name else REJECTED,
                 reason_has="USD"),
            Case(topic, "unknown wallet", make(500, wallet=unknown), key=unknown,
                 expect=on_unknown, reason_has="unknown wallet"),
        ]
    cases += [
        Case(BILLING_DEBITS.name, "charge with a negative line", charge(-5), key=w,
             reason_has="amount"),
        Case(BILLING_DEBITS.name, "charge with too many lines", _json(_envelope(
            "billing.charge_wallet", wallet_id=w, currency="ZAR", charges=[
                {"line_id": str(uuid4()), "kind": "debit", "amount_minor": 1,
                 "period_start": "2026-12-01T10:00:00Z"}
            ] * (MAX_CHARGES_PER_MESSAGE + 1))), key=w, reason_has="charges"),
        # the ledger key (the debit id) booked before, with other content
        Case(BILLING_DEBITS.name, "repeat of a booked debit with another amount",
             _json({**booked_debit, "event_id": str(uuid4()),
                    "amount": {"amount_minor": 99_999, "currency": "ZAR"}}), key=w,
             reason_has=REUSED),
        Case(BILLING_DEBITS.name, "repeat of a booked debit's event id with other content",
             _json({**booked_debit, "debit_id": booked_debit["debit_id"],
                    "description": "changed"}), key=w, reason_has=REUSED),
        # the payment (the wallet's claim is by payment id) booked before, another amount
        Case(WALLET_TOPUPS.name, "repeat of a booked payment with another amount",
             _json({**booked_topup, "event_id": str(uuid4()),
                    "amount": {"amount_minor": 77_777, "currency": "ZAR"}}), key=w,
             reason_has=REUSED),
        Case(BILLING_DEBITS.name, "debit dated in the year 1", _json({
            **_envelope("billing.debit_wallet", debit_id=str(uuid4()), wallet_id=w,
                        amount={"amount_minor": 500, "currency": "ZAR"}),
            "occurred_at": "0001-01-01T00:00:00+01:00"}), key=w, reason_has="UTC"),
        Case(BILLING_DEBITS.name, "debit without a time zone", _json({
            **_envelope("billing.debit_wallet", debit_id=str(uuid4()), wallet_id=w,
                        amount={"amount_minor": 500, "currency": "ZAR"}),
            "occurred_at": "2026-12-01T10:00:00"}), key=w, reason_has="timezone"),
    ]
    vm = str(uuid4())
    cases += [Case(VCENTER_EVENTS.name, f"{event} of an unknown VM",
                   _json(_envelope(f"vcenter.{event}", vm_id=vm)), key=vm,
                   expect=NOTHING_TO_ACT_ON)
              for event in ("vm_powered_on", "vm_powered_off", "vm_suspended", "vm_deleted")]
    cases += [
        Case(PROVISIONING_OUTCOMES.name, "success of an unknown request", _json(_envelope(
            "provisioning.succeeded", request_id=str(uuid4()), wallet_id=w, vm_id=vm)),
            key=w, expect=NOTHING_TO_ACT_ON),
        Case(PROVISIONING_OUTCOMES.name, "failure of an unknown request", _json(_envelope(
            "provisioning.failed", request_id=str(uuid4()), wallet_id=w, vm_id=vm,
            reason="matrix")), key=w, expect=NOTHING_TO_ACT_ON),
        Case(PROVISIONING_OUTCOMES.name, "an unknown VM decommissioned", _json(_envelope(
            "provisioning.vm_decommissioned", wallet_id=w, vm_id=vm)), key=w,
            expect=NOTHING_TO_ACT_ON),
    ]
    # other messages dated far from now: a VM event or usage hour years ahead would move
    # metering's hours (or billing's month) there for good
    cases += [
        Case(VCENTER_EVENTS.name, "VM event far in the future", _json({
            **_envelope("vcenter.vm_powered_on", vm_id=vm),
            "occurred_at": "9999-12-31T00:00:00Z"}), key=vm, reason_has="within 3653 days"),
        Case(VCENTER_EVENTS.name, "VM event far in the past", _json({
            **_envelope("vcenter.vm_powered_off", vm_id=vm),
            "occurred_at": "1970-01-01T00:00:00Z"}), key=vm, reason_has="within 3653 days"),
        Case(METERING_USAGE.name, "usage hour far in the future", _json(_envelope(
            "metering.hourly_usage", usage_id=str(uuid4()), vm_id=vm, wallet_id=w,
            organisation_id=str(organisation_id), hour_start="9999-12-31T00:00:00Z",
            revision=0, seconds=3600, segments=[])), key=w, reason_has="within 3653 days"),
        Case(BILLING_DEBITS.name, "debit far in the future", _json({
            **_envelope("billing.debit_wallet", debit_id=str(uuid4()), wallet_id=w,
                        amount={"amount_minor": 500, "currency": "ZAR"}),
            "occurred_at": "9999-12-31T00:00:00Z"}), key=w, reason_has="within 3653 days"),
    ]
    # ticks far from now: consumers' clocks only move forward, so one would stay for good
    for topic in (CLOCK_TICKS.name, VCENTER_EVENTS.name):
        cases += [
            Case(topic, "tick far in the future", _json(_envelope(
                "clock.tick", at="9999-12-31T00:00:00Z")), key="clock",
                reason_has="within 3653 days"),
            Case(topic, "tick far in the past", _json(_envelope(
                "clock.tick", at="1970-01-01T00:00:00Z")), key="clock",
                reason_has="within 3653 days"),
        ]
    return cases


# Consumed topics with no "same id, other content" case, and why.
NO_REUSE_CASE = {
    # The vCenter simulator stands in for vCenter (no database): it answers a command by
    # events whose ids derive from the command's, so a command id reused with other content
    # yields events under ids already consumed, which metering's and provisioning's inboxes
    # refuse as reused (the vcenter.events cases).
    "vcenter.commands": "the simulator's; its events' ids derive from the command's",
}


def reuse_cases(wallet_id: UUID, organisation_id: UUID, booked_vm_key: str,
                booked_usage: dict[str, Any]) -> list[Case]:
    """For every consumed topic (but `NO_REUSE_CASE`), an id consumed before sent again with
    other content; the original is either booked before the matrix (`booked_*`: the VM
    request's idempotency key, a billed usage hour) or sent just before its reuse, one
    that changes nothing (about an unknown VM, request or organisation). The repeats of
    booked debits and payments are in `money_cases`."""
    w, org = str(wallet_id), str(organisation_id)
    cases: list[Case] = []

    def pair(topic: str, what: str, original: dict[str, Any], changes: dict[str, Any],
             key: str, first: str = NOTHING_TO_ACT_ON, first_reason: str = "",
             then: str = DEAD_LETTER, quiet: tuple[str, ...] = ()) -> None:
        """The original, then its id with `changes`; `quiet` consumers answer neither."""
        calm = tuple((c, NOTHING_TO_ACT_ON) for c in quiet)
        cases.append(Case(topic, f"{what}: the original", _json(original), key=key,
                          expect=first, reason_has=first_reason, expect_of=calm))
        cases.append(Case(topic, f"{what}: its id again with other content",
                          _json({**original, **changes}), key=key, expect=then,
                          reason_has=REUSED, expect_of=calm))

    vm = str(uuid4())
    pair(VCENTER_EVENTS.name, "power-on of an unknown VM",
         _envelope("vcenter.vm_powered_on", vm_id=vm), {"vm_id": str(uuid4())}, key=vm)
    pair(PROVISIONING_OUTCOMES.name, "success of an unknown request",
         _envelope("provisioning.succeeded", request_id=str(uuid4()), wallet_id=w, vm_id=vm),
         {"request_id": str(uuid4())}, key=w)
    # the wallet claims a reservation by its request id: another amount for it is a reuse
    request = str(uuid4())
    pair(PROVISIONING_REQUESTS.name, "reservation for an unknown wallet",
         _envelope("wallet.reserve_funds", request_id=request, wallet_id=str(uuid4()),
                   organisation_id=org, vm_id=vm,
                   amount={"amount_minor": 500, "currency": "ZAR"}),
         {"event_id": str(uuid4()), "amount": {"amount_minor": 600, "currency": "ZAR"}},
         key=w, first=REJECTED, first_reason="unknown wallet")
    pair(WALLET_DECISIONS.name, "funds reserved for an unknown request",
         _envelope("wallet.funds_reserved", request_id=str(uuid4()), wallet_id=w, vm_id=vm,
                   hold_id=str(uuid4()), amount={"amount_minor": 500, "currency": "ZAR"},
                   available_after={"amount_minor": 0, "currency": "ZAR"},
                   expires_at="2026-12-01T11:00:00Z"),
         {"hold_id": str(uuid4())}, key=w, first=DEAD_LETTER,
         first_reason="no provisioning request")
    # provisioning claims depletions by event id; billing has no inbox and nothing to do
    # with a depletion (its effects are keyed by their own ids: docs/reliability.md)
    pair(WALLET_EVENTS.name, "depletion of an unknown organisation",
         _envelope("wallet.depleted", wallet_id=w, organisation_id=str(uuid4()),
                   billing_mode="PAYG", available={"amount_minor": 0, "currency": "ZAR"}),
         {"organisation_id": str(uuid4())}, key=w, first=DEAD_LETTER,
         first_reason="unknown organisation", quiet=("billing",))
    # provisioning's intake is keyed by the portal's idempotency key (the set-up's request)
    cases.append(Case(PORTAL_VM_REQUESTS.name, "the booked VM request's key with another name",
                      _json(_envelope("portal.request_vm", idempotency_key=booked_vm_key,
                                      organisation_id=org, name="another",
                                      spec=VmSpec.of_tier("small").model_dump())),
                      key=org, reason_has="already used for a different request"))
    # billing keeps the latest revision's seconds of each VM hour it billed
    cases.append(Case(METERING_USAGE.name, "the billed usage hour with other seconds",
                      _json({**booked_usage, "event_id": str(uuid4()), "seconds": 1800,
                             "segments": [{**booked_usage["segments"][0], "seconds": 1800}]}),
                      key=w, reason_has=REUSED))
    # ticks are not claimed: the latest wins and clocks only move forward, so a tick id
    # again with another (older) time is one more tick that changes nothing
    for topic in (CLOCK_TICKS.name, VCENTER_EVENTS.name):
        pair(topic, "tick", _envelope("clock.tick", at="2020-01-01T00:00:00Z"),
             {"at": "2020-01-02T00:00:00Z"}, key="clock", then=NOTHING_TO_ACT_ON)
    return cases
