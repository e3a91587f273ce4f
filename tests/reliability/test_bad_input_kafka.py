"""Bad records on every consumed topic: each becomes a dead letter naming its reason (or the
consumers' documented answer), no consumer stops, and nothing changes.

The five services run in-process on the real broker and database with a wallet that has a
balance, a VM (so a hold) and booked usage. Then every case of `bad_input.py` is sent: the
structural ones to every topic a service consumes (from the topic map, so a new topic gets
them), the money ones to the topics that move money. Once all services have committed past
them (`quiesce`: a consumer commits a batch only after handling it, so a stuck one fails
the barrier), every table but inboxes and outboxes is as before, each case has its answer,
and a good debit and top-up sent last are booked."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from services.billing.app import BillingService
from services.metering.app import MeteringService
from services.provisioning.app import ProvisioningService
from services.vcenter_simulator.app import VcenterSimulator
from services.vcenter_simulator.domain import SimulatorConfig
from services.wallet.app import WalletService
from shared.contracts.clock import ClockTick
from shared.contracts.vm import VmSpec
from shared.contracts.wallet import DebitWallet, TopUpWallet
from shared.money import MoneyModel
from shared.topics import (
    BILLING_DEBITS,
    CLOCK_TICKS,
    DEAD_LETTER,
    METERING_USAGE,
    VCENTER_EVENTS,
    WALLET_DECISIONS,
    WALLET_TOPUPS,
)
from shared.webhooks import webhook_headers
from tests.consumed_types import consumed_types
from tests.integration.test_billing_support import usage
from tests.integration.test_provisioning_support import eventually
from tests.kafka_helpers import KafkaProbe, quiesce
from tests.keys import KeyRing, key_ring
from tests.reliability.bad_input import DEAD_LETTER as EXPECT_LETTER
from tests.reliability.bad_input import (
    NO_REUSE_CASE,
    NOTHING_TO_ACT_ON,
    REJECTED,
    REUSED,
    Case,
    consumed_topic_names,
    consumers_of,
    money_cases,
    reuse_cases,
    structural_cases,
)
from tests.state import differences, snapshot


class Running:
    def __init__(self, env: Any, kafka: KafkaProbe) -> None:
        self.env, self.kafka = env, kafka
        s = env.settings
        self.wallet = WalletService(s)
        self.services = [self.wallet, ProvisioningService(s),
                         VcenterSimulator(s, SimulatorConfig()), MeteringService(s),
                         BillingService(s)]
        self.keys: KeyRing | None = None

    def client(self, service: Any, host: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http),
                                 base_url=f"http://{host}", auth=self.keys)

    async def settled(self) -> None:
        await quiesce(self.kafka, self.services, self.env.database_url, timeout=180)

    async def balance(self, wallet_id: UUID) -> int:
        async with self.client(self.wallet, "wallet") as http:
            status = (await http.get(f"/wallets/{wallet_id}")).json()
            check = (await http.get(f"/wallets/{wallet_id}/reconciliation")).json()
        assert check["consistent"], check
        return int(status["balance_minor"])


@pytest.fixture
async def running(env: Any) -> AsyncIterator[Running]:
    async with KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        r = Running(env, kafka)
        started = []
        try:
            for service in r.services:
                await service.start()
                started.append(service)
            r.keys = await key_ring(r.wallet.pool)
            yield r
        finally:
            for service in reversed(started):
                await service.stop()


async def open_wallet_with_a_vm(r: Running) -> tuple[UUID, UUID, str, UUID]:
    """A wallet with money and a VM: the organisation, wallet, VM request's key and VM."""
    assert r.keys is not None
    async with r.client(r.wallet, "wallet") as wallet:
        opened = await wallet.post("/organisations", json={"name": "matrix",
                                                           "billing_mode": "PAYG"})
        assert opened.status_code == 201, opened.text
        org, wallet_id = (UUID(opened.json()[k]) for k in ("organisation_id", "wallet_id"))
        await r.keys.opened(org)
        body = json.dumps({"payment_id": uuid4().hex, "wallet_id": str(wallet_id),
                           "amount_minor": 500_000, "currency": "ZAR",
                           "status": "succeeded"}).encode()
        paid = await wallet.post("/webhooks/payments", content=body, headers=webhook_headers(
            r.env.settings.payment_webhook_secret, body))
        assert paid.status_code == 200, paid.text
    async with r.client(r.services[1], "provisioning") as provisioning:
        await eventually(lambda: provisioning.get(f"/organisations/{org}"),
                         lambda resp: resp.status_code == 200, what="provisioning knows the org")
        vm_key = uuid4().hex
        asked = await provisioning.post("/vm-requests", json={
            "organisation_id": str(org), "name": "vm-1", "tier": "small"},
            headers={"Idempotency-Key": vm_key})
        assert asked.status_code == 202, asked.text
        request = asked.json()["request_id"]
        await eventually(lambda: provisioning.get(f"/vm-requests/{request}"),
                         lambda resp: resp.status_code == 200
                         and resp.json()["status"] == "succeeded", what="the VM is provisioned")
    return org, wallet_id, vm_key, UUID(asked.json()["vm_id"])


async def send(r: Running, cases: list[Case]) -> dict[tuple[int, int], Case]:
    """Each case to its topic; where each landed (partition, offset) per topic."""
    sent: dict[tuple[int, int], Case] = {}
    producer = r.kafka.producer
    for case in cases:
        meta = await producer.send_and_wait(
            r.env.topic(case.topic), case.value,
            key=case.key.encode() if case.key is not None else None)
        sent[(meta.partition, meta.offset)] = case
    return sent


def test_every_consumed_topic_has_cases() -> None:
    """The matrix covers what the services consume: every topic and every message type."""
    cases = structural_cases()
    topics = {c.topic for c in cases}
    assert topics == {topic for _, topic, _ in consumed_types()} == set(consumed_topic_names())
    for _, topic, message_type in consumed_types():
        names = {c.name for c in cases if c.topic == topic}
        assert {f"{message_type}: wrong version", f"{message_type}: missing fields"} <= names
    # an id consumed before, again with other content: on every consumed topic but those
    # `NO_REUSE_CASE` explains
    reused = reuse_cases(uuid4(), uuid4(), "key", {"segments": [{"seconds": 3600}]}) + [
        c for c in money_cases(uuid4(), uuid4(), {"debit_id": "d"}, {})
        if c.reason_has == REUSED]
    assert {c.topic for c in reused} | set(NO_REUSE_CASE) == set(consumed_topic_names())
    assert not {c.topic for c in reused} & set(NO_REUSE_CASE)


async def test_bad_records_are_dead_lettered_and_change_nothing(running: Running) -> None:
    r = running
    org, wallet_id, vm_key, vm_id = await open_wallet_with_a_vm(r)
    booked_debit = DebitWallet(debit_id=uuid4(), wallet_id=wallet_id,
                               amount=MoneyModel(amount_minor=1_000))
    booked_topup = TopUpWallet(payment_id=uuid4().hex, wallet_id=wallet_id,
                               amount=MoneyModel(amount_minor=2_000), source="manual")
    await r.kafka.publish(r.env.topic(BILLING_DEBITS.name), wallet_id, booked_debit)
    await r.kafka.publish(r.env.topic(WALLET_TOPUPS.name), wallet_id, booked_topup)
    await r.settled()
    balance = await r.balance(wallet_id)
    assert balance == 500_000 - 1_000 + 2_000
    # a usage hour billed (and charged), whose seconds a case changes
    booked_usage = usage(vm_id, wallet_id, org, datetime(2026, 12, 1, 9, tzinfo=UTC),
                         [(VmSpec.of_tier("small"), 3600)])
    await r.kafka.publish(r.env.topic(METERING_USAGE.name), wallet_id, booked_usage)
    # clocks set (to a day long past), so the reused ticks' older times change nothing
    tick = ClockTick(at=datetime(2020, 1, 3, tzinfo=UTC))
    await r.kafka.publish(r.env.topic(CLOCK_TICKS.name), "clock", tick)
    for partition in range(VCENTER_EVENTS.partitions):
        await r.kafka.publish(r.env.topic(VCENTER_EVENTS.name), "clock", tick,
                              partition=partition)
    await r.settled()
    balance = await eventually(lambda: r.balance(wallet_id), lambda b: b < 501_000,
                               what="the usage hour charged")
    before = await snapshot(r.env.database_url)
    letters_before = len(await r.kafka.read_to_end(r.env.topic(DEAD_LETTER.name)))

    cases = structural_cases() + money_cases(
        wallet_id, org, json.loads(booked_debit.model_dump_json()),
        json.loads(booked_topup.model_dump_json())) + reuse_cases(
        wallet_id, org, vm_key, json.loads(booked_usage.model_dump_json()))
    sent: dict[str, dict[tuple[int, int], Case]] = {}
    for topic in sorted({c.topic for c in cases}):
        sent[topic] = await send(r, [c for c in cases if c.topic == topic])
    await r.settled()  # every consumer committed past every case: none is stuck

    changed = differences(before, await snapshot(r.env.database_url))
    assert changed == {}, changed

    letters = (await r.kafka.read_to_end(r.env.topic(DEAD_LETTER.name)))[letters_before:]
    by_source: dict[tuple[str, int, int, str], dict[str, Any]] = {
        (x["source_topic"], x["source_partition"], x["source_offset"], x["consumer"]): x
        for x in letters}
    decisions = [json.loads(record.value) for record in
                 await r.kafka.records(r.env.topic(WALLET_DECISIONS.name))
                 if b'"wallet.funds_rejected"' in (record.value or b"")  # the wallet's, not ours
                 and b'"request_id"' in (record.value or b"")]
    rejected = {d["request_id"]: d for d in decisions}
    problems: list[str] = []
    for topic, landed in sent.items():
        for (partition, offset), case in landed.items():
            what = f"{topic} / {case.name}"
            for consumer in sorted(consumers_of(topic)):
                letter = by_source.get((r.env.topic(topic), partition, offset, consumer))
                expect = case.expect_for(consumer)
                if expect == EXPECT_LETTER:
                    if letter is None:
                        problems.append(f"{what}: no dead letter from {consumer}")
                    elif case.reason_has.lower() not in letter["reason"].lower():
                        problems.append(f"{what}: {consumer}'s reason {letter['reason']!r} "
                                        f"does not say {case.reason_has!r}")
                    elif case.value and len(case.value) > 200 and \
                            case.value[:200].decode(errors="replace") in letter["reason"]:
                        problems.append(f"{what}: the reason echoes the record")
                elif letter is not None and expect != NOTHING_TO_ACT_ON:
                    problems.append(f"{what}: unexpected dead letter {letter['reason']!r}")
            if case.expect == REJECTED:
                request_id = json.loads(case.value or b"{}")["request_id"]
                decision = rejected.get(request_id)
                if decision is None:
                    problems.append(f"{what}: no FundsRejected for {request_id}")
                elif case.reason_has.lower() not in " ".join(
                        (decision["reason"].replace("_", " "), decision["detail"])).lower():
                    problems.append(f"{what}: rejected as {decision['reason']}, "
                                    f"{decision['detail']!r}")
    assert problems == [], "\n".join(problems)

    # the wallet's consumers go on: a good debit and top-up sent after all that are booked
    await r.kafka.publish(r.env.topic(BILLING_DEBITS.name), wallet_id, DebitWallet(
        debit_id=uuid4(), wallet_id=wallet_id, amount=MoneyModel(amount_minor=300)))
    await r.kafka.publish(r.env.topic(WALLET_TOPUPS.name), wallet_id, TopUpWallet(
        payment_id=uuid4().hex, wallet_id=wallet_id, amount=MoneyModel(amount_minor=700),
        source="manual"))
    await r.settled()
    assert await r.balance(wallet_id) == balance - 300 + 700
