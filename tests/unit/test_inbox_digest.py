"""The inbox's content digests (issue #17, "duplicate ids with other content"): what a digest
covers, and how a claimed batch is split into messages to handle, redeliveries skipped and
ids reused with other content (dead letters). The statements themselves run in
`tests/integration/test_inbox_claims.py` and the bad-input matrix."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID, uuid4

from aiokafka.structs import ConsumerRecord

from services.wallet.charges import Charge, charge_reuse, charges_of
from shared.consumer import (
    REUSED_ID,
    Incoming,
    content_digest,
    judge_claims,
    subject_digest,
)
from shared.contracts.vcenter import VmPoweredOn
from shared.contracts.wallet import DebitWallet, TopUpWallet
from shared.money import MoneyModel


def record(offset: int) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord("t", 0, offset, 0, 0, None, b"", None, 0, 0, ())


def item(offset: int, message: Any = None) -> Incoming[Any]:
    return Incoming(record(offset), message)


def test_the_digest_is_of_the_content_not_of_its_bytes():
    m = VmPoweredOn(vm_id=uuid4())
    raw = json.loads(m.model_dump_json())
    # the same message as another producer writes it: keys reversed, spaced, a time offset
    rewritten = dict(reversed(list(raw.items())))
    rewritten["occurred_at"] = m.occurred_at.astimezone().isoformat()
    again = VmPoweredOn.model_validate_json(json.dumps(rewritten, indent=2))
    assert content_digest(again) == content_digest(m)
    assert content_digest(m.model_copy(update={"vm_id": uuid4()})) != content_digest(m)
    assert content_digest(VmPoweredOn.model_validate({**raw, "occurred_at":
                                                      "2026-01-01T00:00:00Z"})) \
        != content_digest(m)  # an event's time is its content


def test_a_subject_digest_leaves_the_envelope_out():
    """A payment notified again (a new event at another time) is the same payment."""
    paid = TopUpWallet(payment_id="p-1", wallet_id=uuid4(),
                       amount=MoneyModel(amount_minor=500), source="manual")
    renotified = paid.model_copy(update={"event_id": uuid4(), "correlation_id": uuid4(),
                                         "occurred_at": paid.occurred_at.replace(year=2025)})
    assert subject_digest(renotified) == subject_digest(paid)
    assert content_digest(renotified) != content_digest(paid)
    other = paid.model_copy(update={"amount": MoneyModel(amount_minor=501)})
    assert subject_digest(other) != subject_digest(paid)


def test_fresh_ids_are_kept_once_and_redeliveries_skipped():
    a, b = uuid4(), uuid4()
    items = [item(0), item(1), item(2)]
    kept, refused = judge_claims(items, [a, b, a], [b"x", b"y", b"x"], {a},
                                 {b: b"y"})
    assert kept == [items[0]]
    assert refused == []


def test_an_id_seen_before_with_other_content_is_refused():
    a = uuid4()
    kept, refused = judge_claims([item(0)], [a], [b"new"], set(), {a: b"old"})
    assert kept == []
    assert [(r.record.offset, r.reason) for r in refused] == [(0, REUSED_ID)]


def test_an_id_stored_before_digests_were_kept_stays_a_redelivery():
    a = uuid4()
    assert judge_claims([item(0)], [a], [b"any"], set(), {a: None}) == ([], [])
    # claimed meanwhile by a concurrent batch (not in the statement's snapshot): a repeat
    assert judge_claims([item(0)], [a], [b"any"], set(), {}) == ([], [])


def test_within_a_batch_the_first_is_booked_and_another_content_refused():
    a = uuid4()
    items = [item(0), item(1), item(2)]
    kept, refused = judge_claims(items, [a, a, a], [b"first", b"second", b"first"], {a}, {})
    assert kept == [items[0]]
    assert [r.record.offset for r in refused] == [1]
    # an id seen before, repeated in the batch: each compared with what was stored
    kept, refused = judge_claims(items, [a, a, a], [b"old", b"new", b"old"], set(), {a: b"old"})
    assert kept == [] and [r.record.offset for r in refused] == [1]


def _debit(debit_id: UUID, amount: int, description: str = "usage") -> DebitWallet:
    return DebitWallet(debit_id=debit_id, wallet_id=uuid4(),
                       amount=MoneyModel(amount_minor=amount), description=description)


def test_a_charge_booked_with_another_amount_or_description_is_not_a_repeat():
    wallet, debit_id = uuid4(), uuid4()
    m = _debit(debit_id, 1_000, "setup fee")
    [charge] = charges_of(m)
    assert charge_reuse(m, [charge], wallet, {}) is None
    assert charge_reuse(m, [charge], wallet, {(wallet, charge.key): (1_000, "setup fee")}) is None
    reason = charge_reuse(m, [charge], wallet, {(wallet, charge.key): (900, "setup fee")})
    assert reason is not None and "reused with other content" in reason and "900" in reason
    reason = charge_reuse(m, [charge], wallet, {(wallet, charge.key): (1_000, "other")})
    assert reason is not None and "description" in reason
    assert charge_reuse(m, [charge], uuid4(), {(wallet, charge.key): (900, "x")}) is None


def test_a_usage_entry_is_compared_by_amount_only():
    """An entry sent for a line booked per line before entries existed keeps the line's key
    under another description: that is a repeat, not a reuse."""
    wallet = uuid4()
    entry = Charge("debit", uuid4(), 700, None, VmPoweredOn(vm_id=uuid4()).occurred_at,
                   "usage 10:00 r0, 1 VM", "debit:x")
    usage: Any = object()  # stands for a ChargeUsage: not a debit or credit message
    assert charge_reuse(usage, [entry], wallet, {(wallet, "debit:x"): (700, "usage")}) is None
    assert charge_reuse(usage, [entry], wallet, {(wallet, "debit:x"): (70, "usage")}) \
        is not None
