"""A wallet in another currency, on the real broker and database: billing rates its usage with
the card of its currency, provisioning holds and refuses by its funds in that currency, and
nothing is priced before that currency's first card takes effect."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import asyncpg
import pytest

from shared.contracts.vm import VmSpec
from shared.topics import DEAD_LETTER, METERING_USAGE
from shared.webhooks import webhook_headers
from tests.integration.test_billing_support import (
    FEB,
    JAN,
    month_closed,
    publish_watermarks,
    running_billing,
    usage,
)
from tests.integration.test_provisioning_support import (  # noqa: F401
    Platform,
    eventually,
    platform_fixture,
)
from tests.integration.wallet_fixtures import running_wallet
from tests.kafka_helpers import KafkaProbe

USD_FROM = datetime(2026, 1, 11, tzinfo=UTC)
USD_MONTHLY = {"small": 900, "medium": 1_800, "large": 3_600, "enterprise": 7_200}
USD_CARD = {"version": "usd-2026-01", "effective_from": USD_FROM.isoformat(), "currency": "USD",
            "tier_monthly_minor": USD_MONTHLY, "vcpu_hour": "1", "ram_gb_hour": "1/3",
            "disk_gb_hour": "1/1000"}


@pytest.fixture(name="env")
def env_with_a_usd_card(env):  # type: ignore[no-untyped-def]
    """The services of these tests load the USD card from RATE_CARDS, as deployed ones do, and
    take event time from clock ticks only (as in a simulation), so a test can be before it."""
    return dataclasses.replace(env, settings=env.settings.model_copy(update={
        "rate_cards": json.dumps([USD_CARD]), "event_clock": "ticks"}))


async def billing_knows(database_url: str, wallet_ids: list[UUID]) -> None:
    """Billing rates by the currency it heard in wallet.opened: wait until it has."""
    conn = await asyncpg.connect(database_url)
    try:
        async def known() -> int:
            return int(await conn.fetchval(
                "SELECT count(*) FROM billing.wallets WHERE wallet_id = ANY($1::uuid[])",
                wallet_ids))
        await eventually(known, lambda n: n == len(wallet_ids), what="billing to know wallets")
    finally:
        await conn.close()


async def test_billing_rates_a_usd_wallet_with_the_usd_card_and_refuses_hours_before_it(env):
    settings = env.settings
    medium = VmSpec.of_tier("medium")
    async with running_wallet(settings) as (_, wallet), running_billing(settings), \
            KafkaProbe(settings.kafka_bootstrap_servers) as kafka:
        usd_org, usd_wallet = await wallet.open(currency="USD", balance=100_000)
        zar_org, zar_wallet = await wallet.open(balance=100_000)
        await billing_knows(env.database_url, [usd_wallet, zar_wallet])
        usd_vm, zar_vm = uuid4(), uuid4()
        first = int((USD_FROM - JAN) / timedelta(hours=1))  # 240: the USD card's first hour
        hours = range(first - 1, 31 * 24)  # one hour before it, then to the end of January
        await kafka.publish_many(settings.topic(METERING_USAGE.name), [
            (wallet_id, usage(vm, wallet_id, org, JAN + timedelta(hours=h), [(medium, 3600)]))
            for vm, wallet_id, org in ((usd_vm, usd_wallet, usd_org),
                                       (zar_vm, zar_wallet, zar_org)) for h in hours])
        await publish_watermarks(kafka, settings, FEB)
        closed = await month_closed(kafka, settings, [usd_wallet, zar_wallet], "2026-01")

        usd, zar = closed[usd_wallet], closed[zar_wallet]
        billed_hours = 31 * 24 - first
        # US$18.00 a month over 730 hours is 2.46 cents an hour, rounded down: 2 cents
        assert usd["vms"][0]["amount"] == {"amount_minor": 2 * billed_hours, "currency": "USD"}
        assert usd["closing_balance"] == {"amount_minor": 100_000 - 2 * billed_hours,
                                          "currency": "USD"}
        # the ZAR wallet keeps the ZAR card, also the hour before the USD card: 41 cents each
        assert zar["vms"][0]["amount"] == {"amount_minor": 41 * (billed_hours + 1),
                                           "currency": "ZAR"}
        assert zar["mismatches"] == []
        # the USD hour before the USD card has no price: a dead letter and a mismatch, no charge
        assert len(usd["mismatches"]) == 1 and "no rate card in USD" in usd["mismatches"][0]
        letters = await kafka.read_count(settings.topic(DEAD_LETTER.name), 1)
        assert "no rate card in USD in effect" in letters[0]["reason"]
        for wallet_id, statement in ((usd_wallet, usd), (zar_wallet, zar)):
            status = await wallet.status(wallet_id)
            assert status["balance_minor"] == statement["closing_balance"]["amount_minor"]
            await wallet.assert_consistent(wallet_id)


async def open_usd_organisation(platform: Platform, balance_minor: int) -> dict[str, str]:
    r = await platform.wallet_http.post("/organisations", json={
        "name": f"org-{uuid4().hex[:6]}", "billing_mode": "PAYG", "currency": "USD"})
    assert r.status_code == 201, r.text
    opened = {k: str(v) for k, v in r.json().items()}
    await platform.keys.opened(opened["organisation_id"])
    body = json.dumps({"payment_id": f"pay-{uuid4().hex}", "wallet_id": opened["wallet_id"],
                       "amount_minor": balance_minor, "currency": "USD",
                       "status": "succeeded"}).encode()
    paid = await platform.wallet_http.post(
        "/webhooks/payments", content=body,
        headers=webhook_headers(platform.env.settings.payment_webhook_secret, body))
    assert paid.status_code == 200 and paid.json()["applied"], paid.text
    await eventually(lambda: platform.http.get(f"/organisations/{opened['organisation_id']}"),
                     lambda resp: resp.status_code == 200, what="provisioning to know the org")
    return opened


async def tick_and_wait(platform: Platform, db: asyncpg.Connection, at: datetime) -> None:
    await platform.tick(at)
    for service in ("provisioning", "wallet"):
        await eventually(lambda s=service: db.fetchval(f"SELECT now FROM {s}.clock WHERE id = 1"),
                         lambda now: now == at, what=f"{service} to see the tick")


async def test_provisioning_holds_usd_by_the_usd_card_and_refuses_before_it(
        platform: Platform, db: asyncpg.Connection):
    org = await open_usd_organisation(platform, balance_minor=USD_MONTHLY["medium"] + 500)
    org_id = org["organisation_id"]
    await tick_and_wait(platform, db, USD_FROM - timedelta(days=1))
    early = await platform.request_vm(org_id, "too-early", tier="medium")
    assert early.status_code == 422, early.text
    assert ("no price for the organisation's USD wallet: no rate card in USD in effect at "
            "2026-01-10") in early.text
    estimate = await platform.http.post("/estimates", json={
        "organisation_id": org_id, "tier": "medium", "at": USD_FROM.isoformat()})
    assert estimate.status_code == 200, estimate.text
    assert (estimate.json()["currency"], estimate.json()["monthly_minor"]) == ("USD", 1_800)

    await tick_and_wait(platform, db, USD_FROM + timedelta(hours=1))
    ok = await platform.request_vm(org_id, "web", tier="medium")
    assert ok.status_code == 202, ok.text
    assert ok.json()["hold_minor"] == USD_MONTHLY["medium"]
    assert ok.json()["rate_card_version"] == "usd-2026-01"
    await platform.wait_request(ok.json()["request_id"], {"succeeded"})
    wallet = await platform.wallet_status(org["wallet_id"])
    assert (wallet["held_minor"], wallet["available_minor"]) == (1_800, 500)

    # US$5.00 left: a large (US$36.00 a month) is refused for funds, and a small (US$9.00)
    for tier in ("large", "small"):
        r = await platform.request_vm(org_id, f"no-{tier}", tier=tier)
        assert r.status_code == 202, r.text
        refused = await platform.wait_request(r.json()["request_id"], {"rejected"})
        assert refused["reason"].startswith("insufficient_funds")
    wallet = await platform.wallet_status(org["wallet_id"])
    assert (wallet["balance_minor"], wallet["held_minor"]) == (2_300, 1_800)
