"""Auto top-up: a low-balance event of a wallet with auto top-up charges the card once;
success tops the wallet up, a decline or a timeout is published as declined."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from uuid import UUID, uuid4

import asyncpg
from prometheus_client import REGISTRY

from services.billing.auto_topup import attempt_id_for
from services.billing.gateway import SimulatedGateway
from shared.contracts.vm import VmSpec
from shared.contracts.wallet import WalletOpened
from shared.topics import (
    BILLING_DEBITS,
    BILLING_EVENTS,
    METERING_USAGE,
    WALLET_EVENTS,
    WALLET_TOPUPS,
)
from tests.integration.test_billing_support import JAN, running_billing, usage
from tests.integration.wallet_fixtures import running_wallet
from tests.kafka_helpers import KafkaProbe, settled

BIG = VmSpec(vcpu=128, ram_gb=2048, disk_gb=50)  # R97.29 an hour


async def test_auto_topup_succeeds_declines_and_times_out_once_each(env, db: asyncpg.Connection):
    settings = env.settings
    gateway = SimulatedGateway()
    async with running_wallet(settings) as (_, wallet), \
            running_billing(settings, gateway=gateway) as (_, billing_http), \
            KafkaProbe(settings.kafka_bootstrap_servers) as kafka:
        wallets: dict[str, tuple[UUID, UUID]] = {}
        for token in ("tok_visa_ok", "tok_decline_stolen", "tok_timeout_slow"):
            org, wallet_id = await wallet.open(balance=100_000)
            response = await wallet.http.put(f"/wallets/{wallet_id}/auto-topup", json={
                "enabled": True, "threshold_minor": 50_000, "amount_minor": 200_000,
                "card_token": token})
            assert response.status_code == 200, response.text
            wallets[token] = (org, wallet_id)
        # six hours of a big VM take each wallet from R1,000 to R416.26: below R500
        await kafka.publish_many(settings.topic(METERING_USAGE.name), [
            (wallet_id, usage(vm, wallet_id, org, JAN + timedelta(hours=h), [(BIG, 3600)]))
            for org, wallet_id in wallets.values() for vm in [uuid4()] for h in range(6)])

        declined = await kafka.read_count(
            settings.topic(BILLING_EVENTS.name), 2, timeout=30,
            where=lambda m: m["type"] == "billing.auto_topup_declined")
        reasons = {UUID(m["wallet_id"]): m["reason"] for m in declined}
        assert "declined" in reasons[wallets["tok_decline_stolen"][1]]
        assert "timed out" in reasons[wallets["tok_timeout_slow"][1]]
        assert wallets["tok_visa_ok"][1] not in reasons

        ok_wallet = wallets["tok_visa_ok"][1]
        topped = await kafka.read_count(
            settings.topic(WALLET_EVENTS.name), 1, timeout=30,
            where=lambda m: m["type"] == "wallet.topped_up" and m["wallet_id"] == str(ok_wallet)
            and m["amount"]["amount_minor"] == 200_000)
        assert (await wallet.status(ok_wallet))["balance_minor"] == 100_000 - 6 * 9729 + 200_000
        for _, wallet_id in wallets.values():
            await wallet.assert_consistent(wallet_id)
        for token in ("tok_decline_stolen", "tok_timeout_slow"):
            assert (await wallet.status(wallets[token][1]))["balance_minor"] == \
                100_000 - 6 * 9729

        # each low-balance event was charged once, under an id derived from it
        await settled(kafka, settings, "wallet", [BILLING_DEBITS, WALLET_TOPUPS],
                      database_url=env.database_url)
        await settled(kafka, settings, "billing", [WALLET_EVENTS], database_url=env.database_url)
        low = [m for m in await kafka.read_to_end(settings.topic(WALLET_EVENTS.name))
               if m["type"] == "wallet.low_balance"]
        assert len(low) == 3
        assert sorted(a for a, _, _ in gateway.calls) == sorted(
            attempt_id_for(UUID(m["event_id"])) for m in low)
        assert topped[0]["payment_id"] == str(next(
            a for a, token, _ in gateway.calls if token == "tok_visa_ok"))
        statuses = {r["card_token"]: r["status"] for r in await db.fetch(
            "SELECT card_token, status FROM billing.topup_attempts")}
        assert statuses == {"tok_visa_ok": "succeeded", "tok_decline_stolen": "declined",
                            "tok_timeout_slow": "timed_out"}

        # billing's HTTP read of each wallet's attempts: the outcome and, if not paid, why
        for token, outcome, why in (("tok_visa_ok", "succeeded", ""),
                                    ("tok_decline_stolen", "declined", "declined by issuer"),
                                    ("tok_timeout_slow", "timed_out", "outcome unknown")):
            listed = await billing_http.get(f"/wallets/{wallets[token][1]}/auto-topups")
            assert listed.status_code == 200, listed.text
            [attempt] = listed.json()
            assert (attempt["outcome"], attempt["amount_minor"], attempt["currency"]) == \
                (outcome, 200_000, "ZAR")
            assert why in attempt["reason"] and (why or attempt["reason"] == "")
            assert attempt["decided_at"] is not None
        assert (await billing_http.get(f"/wallets/{uuid4()}/auto-topups")).status_code == 404
        assert (await billing_http.get(
            f"/wallets/{ok_wallet}/auto-topups?limit=0")).status_code == 422

        # the same low-balance events delivered again charge nothing
        for m in low:
            await kafka.publish(settings.topic(WALLET_EVENTS.name), m["wallet_id"],
                                json.dumps(m).encode())
        # a marker behind the replays in the same partition: once billing has it, it has
        # consumed the replays too
        for m in low:
            marker = WalletOpened(wallet_id=uuid4(), organisation_id=uuid4(),
                                  organisation_name="marker", organisation_kind="customer",
                                  currency="ZAR", billing_mode="PAYG")
            await kafka.publish(settings.topic(WALLET_EVENTS.name), m["wallet_id"], marker)
            async with asyncio.timeout(20):
                while not await db.fetchval(
                        "SELECT count(*) FROM billing.wallets WHERE wallet_id = $1",
                        marker.wallet_id):
                    await asyncio.sleep(0.05)
        assert len(gateway.calls) == 3
        assert (await wallet.status(ok_wallet))["balance_minor"] == 100_000 - 6 * 9729 + 200_000


async def test_attempts_left_pending_by_a_crash_are_settled_once(env, db: asyncpg.Connection):
    """The gateway was asked, then billing stopped before the outcome committed: the attempt
    is still pending. Settling asks the gateway again under the same attempt id (its
    idempotency key), and the outcome is recorded and published once."""
    settings = env.settings
    gateway = SimulatedGateway()
    async with running_wallet(settings) as (_, wallet), \
            running_billing(settings, gateway=gateway) as (billing, _), \
            KafkaProbe(settings.kafka_bootstrap_servers) as kafka:
        _, paid = await wallet.open()
        _, declined = await wallet.open()
        attempts = {paid: (uuid4(), "tok_visa_ok"), declined: (uuid4(), "tok_decline_lost")}
        for wallet_id, (attempt_id, token) in attempts.items():
            await db.execute(
                """INSERT INTO billing.topup_attempts (attempt_id, wallet_id,
                       low_balance_event_id, amount, currency, card_token, status, created_at)
                   VALUES ($1, $2, $3, 200000, 'ZAR', $4, 'pending',
                           now() - interval '30 minutes')""",
                attempt_id, wallet_id, uuid4(), token)
        # too young (perhaps still in flight) or too old (perhaps no longer wanted): left be
        for age in (timedelta(0), timedelta(hours=2)):
            await db.execute(
                """INSERT INTO billing.topup_attempts (attempt_id, wallet_id,
                       low_balance_event_id, amount, currency, card_token, status, created_at)
                   VALUES ($1, $2, $3, 200000, 'ZAR', 'tok_visa_ok', 'pending',
                           now() - $4::interval)""",
                uuid4(), paid, uuid4(), age)

        assert await billing.handlers.settle_pending_attempts(timedelta(minutes=2)) == 2
        assert await billing.handlers.settle_pending_attempts(timedelta(minutes=2)) == 0
        assert REGISTRY.get_sample_value("cloudwallet_billing_topups_pending_too_long") == 1

        topped = await kafka.read_count(
            settings.topic(WALLET_EVENTS.name), 1, timeout=30,
            where=lambda m: m["type"] == "wallet.topped_up" and m["wallet_id"] == str(paid))
        assert topped[0]["payment_id"] == str(attempts[paid][0])
        refused = await kafka.read_count(
            settings.topic(BILLING_EVENTS.name), 1, timeout=30,
            where=lambda m: m["type"] == "billing.auto_topup_declined")
        assert refused[0]["attempt_id"] == str(attempts[declined][0])
        assert (await wallet.status(paid))["balance_minor"] == 200_000
        assert (await wallet.status(declined))["balance_minor"] == 0
        statuses = {r["attempt_id"]: r["status"] for r in await db.fetch(
            "SELECT attempt_id, status FROM billing.topup_attempts")}
        assert sorted(statuses.values()) == ["declined", "pending", "pending", "succeeded"]
        assert statuses[attempts[paid][0]] == "succeeded"
        assert sorted(a for a, _, _ in gateway.calls) == sorted(a for a, _ in attempts.values())
        await wallet.assert_consistent(paid)


async def test_turning_auto_topup_on_while_already_low_tops_up_once(env):
    """The wallet's funds fell below the trigger before auto top-up was on: turning it on
    asks for a top-up now; the same settings put again ask for nothing more."""
    settings = env.settings
    gateway = SimulatedGateway()
    async with running_wallet(settings) as (_, wallet), \
            running_billing(settings, gateway=gateway) as _, \
            KafkaProbe(settings.kafka_bootstrap_servers) as kafka:
        _, wallet_id = await wallet.open(balance=5_000, threshold=10_000)
        settings_body = {"enabled": True, "threshold_minor": 20_000, "amount_minor": 100_000,
                         "card_token": "tok_visa_ok"}
        for _ in range(2):
            response = await wallet.http.put(f"/wallets/{wallet_id}/auto-topup",
                                             json=settings_body)
            assert response.status_code == 200, response.text
        await kafka.read_count(
            settings.topic(WALLET_EVENTS.name), 1, timeout=30,
            where=lambda m: m["type"] == "wallet.topped_up" and m["wallet_id"] == str(wallet_id)
            and m["amount"]["amount_minor"] == 100_000)
        # the wallet's events went to billing, its top-up back to the wallet, and the
        # wallet's answer to billing again: a second top-up would have been asked for by now
        await settled(kafka, settings, "wallet", [], database_url=env.database_url)
        await settled(kafka, settings, "billing", [WALLET_EVENTS], database_url=env.database_url)
        await settled(kafka, settings, "wallet", [WALLET_TOPUPS], database_url=env.database_url)
        await settled(kafka, settings, "billing", [WALLET_EVENTS], database_url=env.database_url)
        assert (await wallet.status(wallet_id))["balance_minor"] == 105_000
        assert len(gateway.calls) == 1
        await wallet.assert_consistent(wallet_id)
