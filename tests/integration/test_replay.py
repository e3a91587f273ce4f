"""Every consumed message type, delivered twice and again after a restart, changes nothing.

One scenario runs the whole system in-process (wallet, provisioning, the vCenter simulator,
metering, billing) on the real broker and database until every type a service consumes
(`tests/consumed_types.py`, from the topic map and the contracts) has been on its topic.
Then every record of every consumed topic is sent again, to its own partition with its key;
once the services are at rest (`quiesce`), their state is compared with a snapshot taken
before. The same once more after every service was stopped and started again. A type
consumed but never replayed fails the test by name.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from services.billing.app import BillingService
from services.metering.app import MeteringService
from services.provisioning.app import ProvisioningService
from services.vcenter_simulator.app import VcenterSimulator
from services.vcenter_simulator.domain import SimulatorConfig
from services.wallet.app import WalletService
from shared.clock import publish_tick
from shared.contracts.portal import RequestVm
from shared.contracts.vcenter import VmCreated, VmResumed, VmSuspended
from shared.contracts.vm import VmSpec
from shared.contracts.wallet import (
    ChargeWallet,
    CreditWallet,
    DebitWallet,
    TopUpWallet,
    UsageCharge,
)
from shared.money import MoneyModel
from shared.topics import (
    BILLING_DEBITS,
    BILLING_EVENTS,
    DEAD_LETTER,
    PORTAL_VM_REQUESTS,
    VCENTER_COMMANDS,
    VCENTER_EVENTS,
    WALLET_TOPUPS,
)
from shared.webhooks import webhook_headers
from tests.consumed_types import consumed_types
from tests.integration.test_provisioning_support import eventually
from tests.kafka_helpers import REPLAYED_HEADER, KafkaProbe, Offsets, quiesce, subscriptions
from tests.keys import KeyRing, key_ring
from tests.state import differences, snapshot

pytestmark = pytest.mark.integration



class System:
    """The five processes on one database and one set of topics, restartable."""

    def __init__(self, env: Any, kafka: KafkaProbe) -> None:
        self.env = env
        self.kafka = kafka
        self.services: list[Any] = []
        self.wallet_http: httpx.AsyncClient | None = None
        self.http: httpx.AsyncClient | None = None
        self.keys: KeyRing | None = None  # kept over restarts: the keys live in the database

    async def start(self) -> None:
        settings = self.env.settings
        self.wallet = WalletService(settings)
        self.provisioning = ProvisioningService(settings)
        # hosts of at most 4 vCPU: a resize to 8 fails, so VmResizeFailed is in the scenario
        self.simulator = VcenterSimulator(settings, SimulatorConfig(max_vcpu=4))
        self.metering = MeteringService(settings)
        self.billing = BillingService(settings)
        self.services = [self.wallet, self.provisioning, self.simulator, self.metering,
                         self.billing]
        for service in self.services:
            await service.start()
        if self.keys is None:
            self.keys = await key_ring(self.wallet.pool)
        self.wallet_http = _client(self.wallet.http, "wallet", self.keys)
        self.http = _client(self.provisioning.http, "provisioning", self.keys)

    async def stop(self) -> None:
        for client in (self.wallet_http, self.http):
            if client is not None:
                await client.aclose()
        for service in reversed(self.services):
            if service._started:
                await service.stop()

    async def settled(self) -> None:
        await quiesce(self.kafka, self.services, self.env.database_url, timeout=120)

    # --- driving it -------------------------------------------------------------------------

    async def open(self, balance: int, **body: Any) -> dict[str, str]:
        assert self.wallet_http is not None and self.http is not None
        r = await self.wallet_http.post("/organisations", json={
            "name": f"org-{uuid4().hex[:6]}", "billing_mode": "PAYG", **body})
        assert r.status_code == 201, r.text
        org = {k: str(v) for k, v in r.json().items()}
        assert self.keys is not None
        await self.keys.opened(org["organisation_id"])
        if balance:
            await self.top_up(org["wallet_id"], balance)
        http = self.http
        await eventually(lambda: http.get(f"/organisations/{org['organisation_id']}"),
                         lambda resp: resp.status_code == 200, what="provisioning knows the org")
        return org

    def acting_for(self, org: dict[str, str]) -> dict[str, str]:
        """Headers of a request the organisation makes whose body does not name it."""
        assert self.keys is not None
        return {"Authorization": f"Bearer {self.keys.organisations[org['organisation_id']]}"}

    async def top_up(self, wallet_id: str, amount: int) -> None:
        assert self.wallet_http is not None
        body = json.dumps({"payment_id": uuid4().hex, "wallet_id": wallet_id,
                           "amount_minor": amount, "status": "succeeded"}).encode()
        r = await self.wallet_http.post("/webhooks/payments", content=body, headers=(
            webhook_headers(self.env.settings.payment_webhook_secret, body)))
        assert r.status_code == 200 and r.json()["applied"], r.text

    async def request_vm(self, org: dict[str, str], name: str, statuses: set[str],
                         **size: Any) -> dict[str, Any]:
        assert self.http is not None
        r = await self.http.post("/vm-requests", json={
            "organisation_id": org["organisation_id"], "name": name, **size},
            headers={"Idempotency-Key": uuid4().hex})
        assert r.status_code == 202, r.text
        return await self.wait_request(r.json()["request_id"], statuses)

    async def wait_request(self, request_id: str, statuses: set[str]) -> dict[str, Any]:
        http = self.http
        assert http is not None
        response = await eventually(
            lambda: http.get(f"/vm-requests/{request_id}"),
            lambda r: r.status_code == 200 and r.json()["status"] in statuses,
            what=f"request {request_id} in {statuses}")
        return dict(response.json())

    async def wait_vm(self, vm_id: str, power_state: str) -> None:
        http = self.http
        assert http is not None
        await eventually(lambda: http.get(f"/vms/{vm_id}"),
                         lambda r: r.status_code == 200 and r.json()["power_state"] == power_state,
                         what=f"VM {vm_id} {power_state}")


def _client(app: Any, host: str, keys: KeyRing) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}",
                             auth=keys)


@pytest.fixture
async def system(env: Any) -> AsyncIterator[System]:
    async with KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        running = System(env, kafka)
        try:
            await running.start()
            yield running
        finally:
            await running.stop()


async def run_scenario(s: System, ticks: AIOKafkaProducer) -> None:
    """A day in which every consumed message type is sent at least once."""
    settings = s.env.settings
    http = s.http
    assert http is not None and s.wallet_http is not None
    now = datetime.now(UTC).replace(microsecond=0)
    rich = await s.open(1_000_000, low_balance_threshold_minor=1_000)
    poor = await s.open(100)

    # created, then resized (and a resize vCenter refuses); failed; refused for funds
    web = await s.request_vm(rich, "web-1", {"succeeded"}, tier="medium")
    await s.wait_vm(web["vm_id"], "running")
    assert (await s.request_vm(rich, "fail-1", {"failed"}, tier="small"))["status"] == "failed"
    assert (await s.request_vm(poor, "tiny", {"rejected"}, tier="small"))["status"] == "rejected"
    as_rich = s.acting_for(rich)
    resized = await http.post(f"/vms/{web['vm_id']}/resize", json={"tier": "large"},
                              headers=as_rich)
    assert resized.status_code == 202, resized.text
    await s.wait_request(resized.json()["request_id"], {"succeeded"})
    too_big = await http.post(f"/vms/{web['vm_id']}/resize", json={"tier": "enterprise"},
                              headers=as_rich)
    assert too_big.status_code == 202, too_big.text
    await s.wait_request(too_big.json()["request_id"], {"failed"})

    # cancelled while vCenter is silent; vCenter creates it late: deleted, decommissioned
    hang = await s.request_vm(rich, "hang-1", {"awaiting_vcenter"}, tier="small")
    cancel = await http.post(f"/vm-requests/{hang['request_id']}/cancel", headers=as_rich)
    assert cancel.status_code == 200, cancel.text
    late = VmCreated(vm_id=hang["vm_id"], request_id=hang["request_id"],
                     organisation_id=rich["organisation_id"], wallet_id=rich["wallet_id"],
                     spec=VmSpec.of_tier("small"))
    await s.kafka.publish(settings.topic(VCENTER_EVENTS.name), late.vm_id, late)
    await s.wait_vm(hang["vm_id"], "deleted")

    # a portal request over Kafka, then that VM deleted by the customer
    portal = RequestVm(idempotency_key="portal-1", organisation_id=UUID(rich["organisation_id"]),
                       name="web-2", spec=VmSpec.of_tier("small"))
    await s.kafka.publish(settings.topic(PORTAL_VM_REQUESTS.name), portal.organisation_id, portal)
    await s.settled()
    commands = await s.kafka.read_to_end(settings.topic(VCENTER_COMMANDS.name))
    web2 = next(c["vm_id"] for c in commands if c.get("name") == "web-2")
    await s.wait_vm(web2, "running")
    assert (await http.delete(f"/vms/{web2}", headers=as_rich)).status_code == 202
    await s.wait_vm(web2, "deleted")

    # vCenter's own suspend and resume
    for event in (VmSuspended(vm_id=web["vm_id"], occurred_at=now + timedelta(minutes=20)),
                  VmResumed(vm_id=web["vm_id"], occurred_at=now + timedelta(minutes=25))):
        await s.kafka.publish(settings.topic(VCENTER_EVENTS.name), event.vm_id, event)

    # a wallet run dry by a debit (its VM suspended for funds), then topped up (resumed)
    dry = await s.open(50_000)
    dry_vm = await s.request_vm(dry, "dry-1", {"succeeded"}, tier="small")
    await s.wait_vm(dry_vm["vm_id"], "running")
    wallet_id = UUID(dry["wallet_id"])
    debits = settings.topic(BILLING_DEBITS.name)
    await s.kafka.publish(debits, wallet_id, DebitWallet(
        debit_id=uuid4(), wallet_id=wallet_id, amount=MoneyModel(amount_minor=40_000),
        period_start=now, occurred_at=now))
    await s.wait_vm(dry_vm["vm_id"], "powered_off")
    await s.top_up(dry["wallet_id"], 100_000)
    await s.wait_vm(dry_vm["vm_id"], "running")
    await s.kafka.publish(debits, wallet_id, CreditWallet(
        credit_id=uuid4(), wallet_id=wallet_id, amount=MoneyModel(amount_minor=500)))
    await s.kafka.publish(debits, wallet_id, ChargeWallet(  # line charges, as billing once sent
        wallet_id=wallet_id, currency="ZAR", charges=[UsageCharge(
            line_id=uuid4(), kind="debit", amount_minor=300, period_start=now)]))
    await s.kafka.publish(settings.topic(WALLET_TOPUPS.name), wallet_id, TopUpWallet(
        payment_id=f"manual-{uuid4().hex[:8]}", wallet_id=wallet_id,
        amount=MoneyModel(amount_minor=700), source="manual"))

    # hours pass: usage, watermarks, charges, debits applied
    await publish_tick(ticks, settings, now + timedelta(hours=3))
    await s.settled()

    # a refund of a usage charge, and auto top-up asked for below its trigger
    entry = await _usage_entry(s.env.database_url, UUID(rich["wallet_id"]))
    refund = await s.wallet_http.post(f"/wallets/{rich['wallet_id']}/refunds", json={
        "refund_id": str(uuid4()), "charge_entry_id": entry, "amount_minor": 1})
    assert refund.status_code == 201, refund.text
    available = (await s.wallet_http.get(f"/wallets/{dry['wallet_id']}")).json()[
        "available_minor"]
    auto = await s.wallet_http.put(f"/wallets/{dry['wallet_id']}/auto-topup", json={
        "enabled": True, "threshold_minor": available + 1_000, "amount_minor": 2_000,
        "card_token": "tok_visa_ok"})
    assert auto.status_code == 200, auto.text
    await publish_tick(ticks, settings, now + timedelta(hours=4))
    await s.settled()


async def _usage_entry(database_url: str, wallet_id: UUID) -> int:
    """The wallet's largest usage entry: its first may be a minute of an hour (the test
    started just before the hour turned), a cent whose 95% refund cap is 0."""
    conn = await asyncpg.connect(database_url)
    try:
        entry = await conn.fetchval(
            """SELECT entry_id FROM wallet.wallet_transactions
               WHERE wallet_id = $1 AND kind = 'usage_debit'
               ORDER BY abs(amount) DESC, entry_id LIMIT 1""",
            wallet_id)
        assert entry is not None, "no usage was booked"
        return int(entry)
    finally:
        await conn.close()


async def consumed_records(s: System) -> dict[str, list[Any]]:
    """Every record now on each topic a running service consumes."""
    topics = sorted({topic for service in s.services for _, topic in subscriptions(service)})
    return {topic: await s.kafka.records(topic) for topic in topics}


async def published_again(s: System, ends: dict[str, Offsets]) -> list[dict[str, Any]]:
    """What the services published after `ends` (the replayed copies left out) that is not
    a message published before `ends` once more, with the same id."""
    fresh = []
    for topic, before in ends.items():
        earlier: set[str] = set()
        for record in await s.kafka.records(topic):
            message = json.loads(record.value)
            if record.offset < before.get(_partition(record), 0):
                earlier.update(identities(message))
            elif not any(key == REPLAYED_HEADER for key, _ in record.headers) \
                    and not identities(message) <= earlier:
                fresh.append(message)
    return fresh


def identities(message: dict[str, Any]) -> set[str]:
    """What makes a message the same one to its consumers: its id; for billing's charges,
    each usage entry (or, in the older shape, each line): re-sent entries may come grouped
    otherwise, under another id, and the wallet books each once (docs/billing.md)."""
    if message["type"] == "billing.charge_wallet":
        return {f'{c["line_id"]}:{c["kind"]}:{c["amount_minor"]}' for c in message["charges"]}
    if message["type"] == "billing.charge_usage":
        return {f'{e["entry_id"]}:{e["kind"]}:{e["amount_minor"]}' for e in message["entries"]}
    return {message["event_id"]}


def _partition(record: Any) -> TopicPartition:
    return TopicPartition(record.topic, record.partition)


async def replay_and_compare(s: System, records: dict[str, list[Any]],
                             before: dict[str, list[str]], when: str) -> None:
    all_topics = sorted({t for service in s.services for _, t in subscriptions(service)}
                        | {s.env.settings.topic(BILLING_EVENTS.name),
                           s.env.settings.topic(DEAD_LETTER.name)})
    ends = {topic: await s.kafka.end_offsets(topic) for topic in all_topics}
    for topic_records in records.values():
        await s.kafka.redeliver(topic_records)
    await s.settled()
    assert differences(before, await snapshot(s.env.database_url, same_as_no_row={})) == {}, when
    # A service may send a message again (the simulator answers a command again, billing
    # re-sends charges, a record is dead-lettered again), but only as the very same
    # message, whose id its consumers already hold: nothing new.
    fresh = await published_again(s, ends)
    assert fresh == [], f"{when}: new messages {Counter(m['type'] for m in fresh)}"


async def test_every_consumed_message_replayed_twice_and_after_a_restart_changes_nothing(
        system: System):
    s = system
    ticks = AIOKafkaProducer(bootstrap_servers=s.env.settings.kafka_bootstrap_servers)
    await ticks.start()
    try:
        await run_scenario(s, ticks)
    finally:
        await ticks.stop()

    records = await consumed_records(s)
    prefix = s.env.settings.topic_prefix
    replayed = {(group.removeprefix(prefix).removesuffix(f".{topic.removeprefix(prefix)}"),
                 topic.removeprefix(prefix), json.loads(r.value).get("type"))
                for service in s.services for group, topic in subscriptions(service)
                for r in records[topic]}
    missing = consumed_types() - replayed
    assert not missing, f"consumed but never replayed: {sorted(missing)}"

    before = await snapshot(s.env.database_url, same_as_no_row={})
    await replay_and_compare(s, records, before, "delivered twice")
    await s.stop()
    await s.start()
    await replay_and_compare(s, records, before, "delivered again after a restart")
