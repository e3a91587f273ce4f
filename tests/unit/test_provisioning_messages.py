"""Facts become contract messages on the right topic and key, with replay-stable ids."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from services.provisioning.domain import (
    AskForFunds,
    Decommissioned,
    Organisation,
    Outcome,
    PowerOffCommand,
    new_create_request,
)
from services.provisioning.messages import Messages
from services.provisioning.submissions import request_id_for, vm_id_for
from shared.contracts.clock import ClockTick
from shared.contracts.vm import VmSpec
from shared.pricing import DEFAULT_BOOK
from shared.settings import Settings

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(topic_prefix="t.")


def request():
    org = Organisation(uuid4(), uuid4(), "ZAR", "PAYG")
    request_id = request_id_for(org.organisation_id, "key-1")
    made, _ = new_create_request(request_id=request_id, idempotency_key="key-1",
                                 organisation=org, vm_id=vm_id_for(request_id), name="web",
                                 spec=VmSpec.of_tier("medium"), book=DEFAULT_BOOK, now=T0,
                                 funds_timeout=timedelta(hours=1))
    return made


def test_one_key_one_request_one_vm():
    org_id = uuid4()
    assert request_id_for(org_id, "k") == request_id_for(org_id, "k")
    assert request_id_for(org_id, "k") != request_id_for(uuid4(), "k")
    assert vm_id_for(request_id_for(org_id, "k")) == vm_id_for(request_id_for(org_id, "k"))


def test_reserve_funds_goes_to_the_wallet_keyed_by_wallet():
    r = request()
    messages = Messages(SETTINGS)
    messages.add([AskForFunds(r)], None)
    (out,) = messages.out
    body = json.loads(out.value)
    assert out.topic == "t.provisioning.requests" and out.key == str(r.wallet_id).encode()
    assert body["type"] == "wallet.reserve_funds" and body["purpose"] == "create"
    assert body["amount"] == {"amount_minor": 30_000, "currency": "ZAR"}
    assert body["correlation_id"] == str(r.request_id)


def test_ids_are_stable_for_a_replay_and_differ_by_cause():
    r = request()
    r.reason = "vcenter: boom"
    tick = ClockTick.at_time(T0)
    first, again, other = Messages(SETTINGS), Messages(SETTINGS), Messages(SETTINGS)
    first.add([Outcome("failed", r, T0)], tick)
    again.add([Outcome("failed", r, T0)], tick)
    other.add([Outcome("failed", r, T0)], None)
    assert first.out == again.out
    assert json.loads(first.out[0].value)["event_id"] != json.loads(other.out[0].value)["event_id"]
    body = json.loads(first.out[0].value)
    assert body["type"] == "provisioning.failed" and body["reason"] == "vcenter: boom"
    assert body["causation_id"] == str(tick.event_id)


def test_commands_go_to_vcenter_keyed_by_vm_and_outcomes_to_the_wallet():
    vm_id, wallet_id = uuid4(), uuid4()
    messages = Messages(SETTINGS)
    messages.add([PowerOffCommand(vm_id, T0), Decommissioned(vm_id, wallet_id, T0)], None)
    power, gone = messages.out
    assert (power.topic, power.key) == ("t.vcenter.commands", str(vm_id).encode())
    assert json.loads(power.value)["reason"] == "suspended_for_funds"
    assert (gone.topic, gone.key) == ("t.provisioning.outcomes", str(wallet_id).encode())
    assert json.loads(gone.value)["type"] == "provisioning.vm_decommissioned"
