"""A simulation in the past: with EVENT_CLOCK=ticks the wallet stamps what happens by HTTP
with its clock, and billing closes every month a wallet existed, quiet ones too."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from services.billing import repository as billing_repo
from shared.contracts.clock import ClockTick
from shared.topics import CLOCK_TICKS
from tests.integration.test_billing_support import (
    month_closed,
    publish_watermarks,
    running_billing,
)
from tests.integration.wallet_fixtures import running_wallet
from tests.kafka_helpers import KafkaProbe

OPENED = datetime(2025, 3, 10, 9, tzinfo=UTC)  # long before the wall clock's today
JUNE = datetime(2025, 6, 1, tzinfo=UTC)


async def _until(probe, timeout: float = 30):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not (result := await probe()):
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)
    return result


async def test_a_quiet_wallet_opened_in_the_past_gets_every_month_it_existed(env, db):
    settings = env.settings.model_copy(update={"event_clock": "ticks"})
    async with running_wallet(settings) as (_, wallet), running_billing(settings), \
            KafkaProbe(settings.kafka_bootstrap_servers) as kafka:
        await kafka.publish(settings.topic(CLOCK_TICKS.name), "clock",
                            ClockTick.at_time(OPENED))
        await _until(lambda: db.fetchval("SELECT now = $1 FROM wallet.clock", OPENED))
        _, quiet = await wallet.open()
        _, funded = await wallet.open(balance=5_000)
        opened_at = await _until(lambda: db.fetchval(
            f"SELECT opened_at FROM {billing_repo.SCHEMA}.wallets WHERE wallet_id = $1",
            quiet))
        assert opened_at == OPENED  # the clock's time, not today's
        await _until(lambda: db.fetchval(
            f"SELECT count(*) = 1 FROM {billing_repo.SCHEMA}.movements WHERE wallet_id = $1",
            funded))

        await publish_watermarks(kafka, settings, JUNE)

        for month in ("2025-03", "2025-04", "2025-05"):
            closed = await month_closed(kafka, settings, [quiet, funded], month)
            assert all(closed[quiet][k]["amount_minor"] == 0 for k in (
                "opening_balance", "charges", "credits", "refunds", "closing_balance"))
            assert closed[funded]["closing_balance"]["amount_minor"] == 5_000
        assert closed[funded]["opening_balance"]["amount_minor"] == 5_000
        entry_at = await db.fetchval(
            "SELECT occurred_at FROM wallet.wallet_transactions WHERE wallet_id = $1", funded)
        assert entry_at == OPENED  # a payment without a time of its own: the clock's
