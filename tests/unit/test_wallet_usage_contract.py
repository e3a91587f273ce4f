"""The usage entry contract billing sends the wallet: parts one per VM, adding up, bounded."""

from datetime import UTC, datetime
from uuid import uuid4

import pytest
from pydantic import TypeAdapter, ValidationError

from shared.contracts.wallet import (
    MAX_VM_PARTS_PER_MESSAGE,
    BillingCharge,
    ChargeUsage,
    UsageEntry,
)

HOUR = datetime(2026, 1, 1, 14, tzinfo=UTC)


def entry(amounts: list[int], **changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "entry_id": str(uuid4()), "kind": "debit", "hour_start": HOUR.isoformat(),
        "revision": 0, "amount_minor": sum(amounts),
        "vm_ids": [str(uuid4()) for _ in amounts], "line_ids": [str(uuid4()) for _ in amounts],
        "vm_amounts": amounts}
    return fields | changes


def test_a_charge_usage_parses_as_a_billing_charge():
    message = ChargeUsage(wallet_id=uuid4(), currency="ZAR",
                          entries=[UsageEntry.model_validate(entry([41, 82]))])
    parsed = TypeAdapter(BillingCharge).validate_json(message.model_dump_json())
    assert isinstance(parsed, ChargeUsage) and parsed.entries[0].amount_minor == 123


@pytest.mark.parametrize("changes, reason", [
    ({"amount_minor": 124}, "add up to 123, not amount_minor 124"),
    ({"line_ids": [str(uuid4())]}, "one item per VM"),
    ({"vm_amounts": [41, 0], "amount_minor": 41}, "greater than 0"),
    ({"revision": -1}, "greater than or equal to 0"),
    ({"kind": "refund"}, "'debit' or 'credit'"),
])
def test_bad_entries_are_refused_with_the_reason(changes, reason):
    with pytest.raises(ValidationError, match=reason):
        UsageEntry.model_validate(entry([41, 82], **changes))


def test_a_vm_twice_in_one_entry_is_refused():
    vm = str(uuid4())
    with pytest.raises(ValidationError, match="a VM appears twice"):
        UsageEntry.model_validate(entry([41, 41], vm_ids=[vm, vm]))


def test_a_message_carries_a_bounded_number_of_vm_parts():
    half = MAX_VM_PARTS_PER_MESSAGE // 2 + 1
    entries = [UsageEntry.model_validate(entry([1] * half)) for _ in range(2)]
    with pytest.raises(ValidationError, match=f"{2 * half} VM parts in one message"):
        ChargeUsage(wallet_id=uuid4(), currency="ZAR", entries=entries)
