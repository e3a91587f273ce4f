"""Reservations through the real broker: the rule that no VM is provisioned without funds."""

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from shared.clock import publish_tick
from shared.contracts.wallet import (
    ProvisioningFailed,
    ProvisioningSucceeded,
    ReserveFunds,
)
from shared.money import MoneyModel
from shared.topics import (
    CLOCK_TICKS,
    DEAD_LETTER,
    PROVISIONING_OUTCOMES,
    PROVISIONING_REQUESTS,
    WALLET_DECISIONS,
)
from tests.integration.wallet_fixtures import running_wallet, wait_assigned
from tests.kafka_helpers import KafkaProbe, settled

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def request(org: UUID, wallet: UUID, amount: int, currency: str = "ZAR",
            at: datetime = T0) -> ReserveFunds:
    return ReserveFunds(request_id=uuid4(), wallet_id=wallet, organisation_id=org, vm_id=uuid4(),
                        amount=MoneyModel(amount_minor=amount, currency=currency), occurred_at=at)


async def decisions_for(kafka: KafkaProbe, env, requests: list[ReserveFunds]) -> dict[str, dict]:
    wanted = {str(r.request_id) for r in requests}
    # Until every request has its decision: a decision may come twice (at least once; with
    # two instances, one's drain can take a row the other pushed before its delete), so
    # counting messages is not enough. Generous: two instances rebalance first (about 10 s).
    found = await kafka.read(env.topic(WALLET_DECISIONS.name), timeout=90,
                             until=lambda ms: wanted <= {m["request_id"] for m in ms})
    by_request = {m["request_id"]: m for m in found if m["request_id"] in wanted}
    assert set(by_request) == wanted
    return by_request


async def test_seed_scenarios(env):
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        rich_org, rich = await wallet.open(balance=1_000_000)  # R10,000
        poor_org, poor = await wallet.open(balance=500)  # R5
        low_org, low = await wallet.open(balance=10_000)  # R100: below every tier
        vm_500 = request(rich_org, rich, 50_000)
        vm_1000 = request(poor_org, poor, 100_000)
        tiers = [request(low_org, low, price) for price in (15_000, 30_000, 60_000, 120_000)]
        topic = env.topic(PROVISIONING_REQUESTS.name)
        for r in [vm_500, vm_1000, *tiers]:
            await kafka.publish(topic, r.wallet_id, r)
        decided = await decisions_for(kafka, env, [vm_500, vm_1000, *tiers])

        assert decided[str(vm_500.request_id)]["type"] == "wallet.funds_reserved"
        assert decided[str(vm_500.request_id)]["available_after"]["amount_minor"] == 950_000
        rejected = decided[str(vm_1000.request_id)]
        assert rejected["type"] == "wallet.funds_rejected"
        assert rejected["reason"] == "insufficient_funds"
        assert rejected["available"]["amount_minor"] == 500
        assert rejected["required"]["amount_minor"] == 100_000
        for tier in tiers:
            assert decided[str(tier.request_id)]["reason"] == "insufficient_funds"

        assert (await wallet.status(rich))["held_minor"] == 50_000
        assert (await wallet.status(poor))["held_minor"] == 0
        assert (await wallet.status(low))["available_minor"] == 10_000
        for w in (rich, poor, low):
            await wallet.assert_consistent(w)


async def test_unknown_wallet_and_currency_mismatch_are_rejected_with_reasons(env):
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        org, w = await wallet.open(balance=1_000_000)
        unknown = request(uuid4(), uuid4(), 100)
        dollars = request(org, w, 100, currency="USD")
        for r in (unknown, dollars):
            await kafka.publish(env.topic(PROVISIONING_REQUESTS.name), r.wallet_id, r)
        decided = await decisions_for(kafka, env, [unknown, dollars])
        assert decided[str(unknown.request_id)]["reason"] == "unknown_wallet"
        assert decided[str(dollars.request_id)]["reason"] == "currency_mismatch"
        assert "USD" in decided[str(dollars.request_id)]["detail"]


async def test_suspended_wallet_rejects_until_reactivated(env):
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        org, w = await wallet.open(balance=100_000)
        suspended = await wallet.http.put(f"/wallets/{w}/status", json={"status": "suspended"})
        assert suspended.status_code == 200
        while_suspended = request(org, w, 100)
        await kafka.publish(env.topic(PROVISIONING_REQUESTS.name), w, while_suspended)
        decided = await decisions_for(kafka, env, [while_suspended])
        assert decided[str(while_suspended.request_id)]["reason"] == "wallet_suspended"
        await wallet.http.put(f"/wallets/{w}/status", json={"status": "active"})
        after = request(org, w, 100)
        await kafka.publish(env.topic(PROVISIONING_REQUESTS.name), w, after)
        decided = await decisions_for(kafka, env, [while_suspended, after])
        assert decided[str(after.request_id)]["type"] == "wallet.funds_reserved"
        bad = await wallet.http.put(f"/wallets/{w}/status", json={"status": "closed"})
        assert bad.status_code == 422
        missing = await wallet.http.put(f"/wallets/{uuid4()}/status", json={"status": "active"})
        assert missing.status_code == 404


async def test_invoice_customer_within_and_beyond_credit_limit(env):
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        org, w = await wallet.open(billing_mode="INVOICE", credit_limit=100_000)
        within = request(org, w, 60_000)
        beyond = request(org, w, 60_000)
        await kafka.publish(env.topic(PROVISIONING_REQUESTS.name), w, within)
        await kafka.publish(env.topic(PROVISIONING_REQUESTS.name), w, beyond)
        decided = await decisions_for(kafka, env, [within, beyond])
        assert decided[str(within.request_id)]["type"] == "wallet.funds_reserved"
        assert decided[str(beyond.request_id)]["reason"] == "insufficient_funds"
        assert decided[str(beyond.request_id)]["available"]["amount_minor"] == 40_000
        status = await wallet.status(w)
        assert (status["balance_minor"], status["held_minor"], status["available_minor"]) == \
            (0, 60_000, 40_000)


@pytest.mark.parametrize("spread", [False, True], ids=["by-key", "every-partition"])
async def test_two_hundred_racing_requests_for_ten_slots(env, spread):
    """Funds for exactly 10 VMs; 200 requests at once, across two wallet instances. By key,
    one instance takes them in order; spread over every partition, both instances'
    transactions compete for the wallet's row."""
    async with running_wallet(env.settings) as (first, wallet), \
            running_wallet(env.settings) as (second, _), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        org, w = await wallet.open(balance=10 * 15_000)
        racing = [request(org, w, 15_000) for _ in range(200)]
        topic = env.topic(PROVISIONING_REQUESTS.name)
        if spread:
            await wait_assigned([first, second], [PROVISIONING_REQUESTS])
            await kafka.publish_spread(topic, w, racing)
        else:
            await kafka.publish_many(topic, [(w, r) for r in racing])
        decided = await decisions_for(kafka, env, racing)
        reserved = [d for d in decided.values() if d["type"] == "wallet.funds_reserved"]
        assert len(reserved) == 10
        status = await wallet.status(w)
        assert (status["held_minor"], status["available_minor"]) == (150_000, 0)
        await wallet.assert_consistent(w)


async def test_every_message_delivered_twice_changes_nothing(env):
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        org, w = await wallet.open(balance=100_000)
        first, second = request(org, w, 30_000), request(org, w, 30_000)
        topic = env.topic(PROVISIONING_REQUESTS.name)
        for r in (first, second, first, second):
            await kafka.publish(topic, w, r)
        # The same request again under a new message id: still one hold.
        await kafka.publish(topic, w, first.model_copy(update={"event_id": uuid4()}))
        outcomes = env.topic(PROVISIONING_OUTCOMES.name)
        failed = ProvisioningFailed(request_id=second.request_id, wallet_id=w,
                                    vm_id=second.vm_id, reason="vcenter said no")
        succeeded = ProvisioningSucceeded(request_id=first.request_id, wallet_id=w,
                                          vm_id=first.vm_id)
        await decisions_for(kafka, env, [first, second])
        for outcome in (succeeded, failed, succeeded, failed):
            await kafka.publish(outcomes, w, outcome)
        assert await _eventually(lambda s: s["held_minor"] == 30_000, wallet, w)
        await settled(kafka, env.settings, "wallet", [PROVISIONING_REQUESTS,
                                                      PROVISIONING_OUTCOMES],
                      database_url=env.database_url)
        decisions = await kafka.read_to_end(env.topic(WALLET_DECISIONS.name))
        assert sorted(d["request_id"] for d in decisions) == sorted(
            str(r.request_id) for r in (first, second))
        status = await wallet.status(w)
        assert (status["held_minor"], status["available_minor"]) == (30_000, 70_000)
        await wallet.assert_consistent(w)


async def test_an_outcome_naming_another_wallets_request_is_dead_lettered(env):
    """Bad input: the hold stays with its own wallet, and neither wallet's funds move."""
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        org_a, a = await wallet.open(balance=100_000)
        _, b = await wallet.open(balance=100_000)
        held = request(org_a, a, 60_000)
        await kafka.publish(env.topic(PROVISIONING_REQUESTS.name), a, held)
        await decisions_for(kafka, env, [held])
        outcomes = env.topic(PROVISIONING_OUTCOMES.name)
        wrong = ProvisioningFailed(request_id=held.request_id, wallet_id=b, vm_id=held.vm_id,
                                   reason="names wallet b")
        # in one batch with wallet a's own (unrelated) outcome, so both wallets are loaded
        await kafka.publish_many(outcomes, [
            (b, wrong), (a, ProvisioningSucceeded(request_id=uuid4(), wallet_id=a,
                                                  vm_id=uuid4()))])
        letters = await kafka.read_count(
            env.topic(DEAD_LETTER.name), 1, timeout=30,
            where=lambda m: m["consumer"] == "wallet" and str(held.request_id) in m["reason"])
        assert f"belongs to wallet {a}" in letters[0]["reason"]
        assert (await wallet.status(a))["held_minor"] == 60_000
        assert (await wallet.status(b))["held_minor"] == 0
        await wallet.assert_consistent(a)
        await wallet.assert_consistent(b)


async def test_hold_without_outcome_expires_in_event_time(env, db):
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        org, w = await wallet.open(balance=100_000)
        waiting, confirmed = request(org, w, 30_000), request(org, w, 20_000)
        for r in (waiting, confirmed):
            await kafka.publish(env.topic(PROVISIONING_REQUESTS.name), w, r)
        await decisions_for(kafka, env, [waiting, confirmed])
        await kafka.publish(env.topic(PROVISIONING_OUTCOMES.name), w, ProvisioningSucceeded(
            request_id=confirmed.request_id, wallet_id=w, vm_id=confirmed.vm_id))
        # Outcomes and ticks are separate topics: let the outcome land before time moves on.
        for _ in range(100):
            status = await db.fetchval("SELECT status FROM wallet.holds WHERE request_id = $1",
                                       confirmed.request_id)
            if status == "active":
                break
            await asyncio.sleep(0.1)
        assert status == "active"
        ttl = timedelta(seconds=env.settings.hold_ttl_seconds)
        await publish_tick(kafka.producer, env.settings, T0 + ttl - timedelta(seconds=1))
        # the wallet has handled the tick, not only the broker received it
        await settled(kafka, env.settings, "wallet", [CLOCK_TICKS])
        assert (await wallet.status(w))["held_minor"] == 50_000
        await publish_tick(kafka.producer, env.settings, T0 + ttl)
        assert await _eventually(lambda s: s["held_minor"] == 20_000, wallet, w)
        await wallet.assert_consistent(w)


async def _eventually(predicate, wallet, wallet_id, attempts: int = 100) -> bool:
    for _ in range(attempts):
        if predicate(await wallet.status(wallet_id)):
            return True
        await asyncio.sleep(0.1)
    return False
