"""Inbox retention against the real broker and database: rows older than the window leave in
small batches, younger ones stay, the consumer keeps working, and a message replayed after
its row left, now older than the window by the consumer's clock, is a dead letter naming the
reason instead of being booked again."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

from shared.clock import publish_tick
from shared.contracts.wallet import ReserveFunds, TopUpWallet
from shared.money import MoneyModel
from shared.topics import (
    CLOCK_TICKS,
    DEAD_LETTER,
    PROVISIONING_REQUESTS,
    VCENTER_EVENTS,
    WALLET_TOPUPS,
)
from tests.integration.test_metering_service import Vm, metering
from tests.integration.wallet_fixtures import running_wallet
from tests.kafka_helpers import KafkaProbe, settled

OLD = timedelta(days=50)  # INBOX_RETENTION_DAYS is 45


async def test_old_inbox_rows_leave_and_a_replay_older_than_the_window_is_refused(env, db):
    pruned, kept = Vm(), Vm()
    powered_on = pruned.on(5)
    async with metering(env) as (service, m):
        assert service.pruner is not None  # EVENT_CLOCK=wall: the pruner runs
        service.pruner.batch = 2  # several batches for three old rows
        await m.publish(pruned.created(0), powered_on, pruned.off(10), kept.created(0))
        await m.closed(await m.tick(60))
        usage_before = await db.fetchval("SELECT count(*) FROM metering.usage_hours")
        assert usage_before == 1
        # The first VM's rows were consumed 50 days ago, as far as the inbox can tell.
        await db.execute(
            """UPDATE metering.inbox SET consumed_at = consumed_at - $1::interval
               WHERE message_id IN (SELECT event_id FROM metering.vm_events WHERE vm_id = $2)""",
            OLD, pruned.vm_id)
        assert await service.pruner.run_once() == 3
        assert service.pruner.pruned == {"metering.inbox": 3}
        assert await db.fetchval("SELECT count(*) FROM metering.inbox") == 1  # the young row
        assert await service.pruner.run_once() == 0

        # Fifty days on, the power-on is delivered again: too old for the inbox to judge.
        later = await m.tick(60 + OLD.total_seconds() / 60)
        await m.closed(later)
        await m.publish(powered_on)
        # The consumer goes on: a fresh event for the other VM is booked.
        await m.publish(kept.on(60 + OLD.total_seconds() / 60 + 5))
        await settled(m.kafka, env.settings, "metering", [VCENTER_EVENTS],
                      database_url=env.database_url)
        letters = await m.kafka.read_to_end(env.topic(DEAD_LETTER.name))
    (letter,) = letters
    assert "older than the inbox window" in letter["reason"], letter["reason"]
    assert str(powered_on.event_id) in letter["reason"]
    assert await db.fetchval("SELECT count(*) FROM metering.vm_events WHERE vm_id = $1",
                             pruned.vm_id) == 3
    assert await db.fetchval("SELECT count(*) FROM metering.vm_events WHERE vm_id = $1",
                             kept.vm_id) == 2
    assert await db.fetchval("SELECT count(*) FROM metering.usage_hours") == usage_before


async def test_pruning_finds_the_oldest_rows_by_an_index(env, db):
    plan = "\n".join(r[0] for r in await db.fetch(
        """EXPLAIN DELETE FROM metering.inbox WHERE ctid IN (
               SELECT ctid FROM metering.inbox WHERE consumed_at < now() - interval '45 days'
               ORDER BY consumed_at LIMIT 1000)"""))
    assert "inbox_by_consumed_at" in plan, plan


async def test_the_wallet_prunes_its_claims_and_refuses_what_is_older_than_the_window(env, db):
    """The wallet's inbox (reservations by request, top-ups by payment) and its webhook
    message ids leave once old; a reservation or payment dated before the window by the
    wallet's clock is refused (a dead letter, a 422), not booked."""
    async with running_wallet(env.settings) as (service, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        assert service.pruner is not None
        org, wallet_id = await wallet.open()
        first = TopUpWallet(payment_id="first-payment", wallet_id=wallet_id,
                            amount=MoneyModel(amount_minor=100_000, currency="ZAR"),
                            source="gateway_webhook")
        assert (await wallet.top_up(wallet_id, 100_000, payment_id=first.payment_id)
                ).status_code == 200
        assert await db.fetchval("SELECT count(*) FROM wallet.webhook_messages") == 1
        await db.execute("UPDATE wallet.inbox SET consumed_at = consumed_at - $1::interval", OLD)
        await db.execute("UPDATE wallet.webhook_messages SET received_at = received_at - "
                         "$1::interval", OLD)
        assert await service.pruner.run_once() == 2
        assert service.pruner.pruned == {"wallet.inbox": 1, "wallet.webhook_messages": 1}

        # The wallet's clock is today; messages dated 50 days ago are refused.
        now = await db.fetchval("SELECT now()")
        await publish_tick(kafka.producer, env.settings, now)
        await settled(kafka, env.settings, "wallet", [CLOCK_TICKS])
        old = now - OLD
        reservation = ReserveFunds(
            request_id=uuid4(), wallet_id=wallet_id, organisation_id=org, vm_id=uuid4(),
            amount=MoneyModel(amount_minor=1_000, currency="ZAR"), occurred_at=old)
        payment = TopUpWallet(payment_id="late-payment", wallet_id=wallet_id,
                              amount=MoneyModel(amount_minor=5_000, currency="ZAR"),
                              source="gateway_webhook", occurred_at=old)
        await kafka.publish(env.topic(PROVISIONING_REQUESTS.name), wallet_id, reservation)
        await kafka.publish(env.topic(WALLET_TOPUPS.name), wallet_id, payment)
        # The first payment again, dated inside the window (a producer's new event time):
        # its claim is gone, the ledger still has it: refused, and the consumer goes on.
        await kafka.publish(env.topic(WALLET_TOPUPS.name), wallet_id,
                            first.model_copy(update={"occurred_at": now}))
        good = TopUpWallet(payment_id="next-payment", wallet_id=wallet_id,
                           amount=MoneyModel(amount_minor=2_500, currency="ZAR"),
                           source="gateway_webhook", occurred_at=now)
        await kafka.publish(env.topic(WALLET_TOPUPS.name), wallet_id, good)
        await settled(kafka, env.settings, "wallet", [PROVISIONING_REQUESTS, WALLET_TOPUPS],
                      database_url=env.database_url)
        letters = await kafka.read_to_end(env.topic(DEAD_LETTER.name))
        status = await wallet.status(wallet_id)
    reasons = sorted(letter["reason"] for letter in letters)
    assert len(reasons) == 3, reasons
    assert sum("may have been consumed already" in r for r in reasons) == 2, reasons
    assert sum("first-payment is in the ledger already" in r for r in reasons) == 1, reasons
    assert (status["balance_minor"], status["held_minor"]) == (102_500, 0)
    assert await db.fetchval("SELECT count(*) FROM wallet.holds") == 0
