"""A rate card change mid-month: each hour is priced by the card in effect at its start."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction
from uuid import uuid4

from shared.contracts.vm import VmSpec
from shared.pricing import DEFAULT_BOOK, RateCard
from shared.topics import METERING_USAGE
from tests.integration.test_billing_support import (
    FEB,
    JAN,
    TIER_MONTHLY,
    expected_vm_month,
    month_closed,
    publish_watermarks,
    running_billing,
    usage,
)
from tests.integration.wallet_fixtures import running_wallet
from tests.kafka_helpers import KafkaProbe

CHANGE = datetime(2026, 1, 16, tzinfo=UTC)
DEARER = {"small": 18_000, "medium": 36_000, "large": 72_000, "enterprise": 144_000}


async def test_a_price_change_mid_month(env):
    settings = env.settings
    book = DEFAULT_BOOK.with_card(RateCard("2026-01-16", CHANGE, "ZAR", DEARER, Fraction(15),
                                           Fraction(5), Fraction(1, 40)))
    small, medium = VmSpec.of_tier("small"), VmSpec.of_tier("medium")
    async with running_wallet(settings) as (_, wallet), \
            running_billing(settings, book=book) as (_, _http), \
            KafkaProbe(settings.kafka_bootstrap_servers) as kafka:
        org, wallet_id = await wallet.open(balance=1_000_000)
        vms = {uuid4(): [[(small, 3600)]] * 744, uuid4(): [[(medium, 3600)]] * 744}
        await kafka.publish_many(settings.topic(METERING_USAGE.name), [
            (wallet_id, usage(vm, wallet_id, org, JAN + timedelta(hours=h), segments))
            for vm, hours in vms.items() for h, segments in enumerate(hours)])
        await publish_watermarks(kafka, settings, FEB)
        statement = (await month_closed(kafka, settings, [wallet_id], "2026-01"))[wallet_id]

        def prices(hour: int) -> dict[str, int]:
            return DEARER if JAN + timedelta(hours=hour) >= CHANGE else TIER_MONTHLY

        by_vm = {v["vm_id"]: v for v in statement["vms"]}
        for vm, hours in vms.items():
            charge, _ = expected_vm_month(hours, prices)
            assert by_vm[str(vm)]["amount"]["amount_minor"] == charge
        medium_vm = next(vm for vm, h in vms.items() if h[0] == [(medium, 3600)])
        # 360 hours at the old price, 384 at the new, each rounded down: 41 and 49 cents
        assert by_vm[str(medium_vm)]["amount"]["amount_minor"] == 360 * 41 + 384 * 49
        # the cap is the highest monthly price seen that month
        assert by_vm[str(medium_vm)]["cap"]["amount_minor"] == 36_000
        assert statement["mismatches"] == []
        status = await wallet.status(wallet_id)
        assert status["balance_minor"] == statement["closing_balance"]["amount_minor"]
        await wallet.assert_consistent(wallet_id)
