"""Billing and the wallet together: an hour's usage of many VMs becomes one wallet entry, and
stays one when billing sends it again after a crash; a correction is booked after it."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import asyncpg

from shared.contracts.vm import VmSpec
from shared.topics import BILLING_DEBITS, METERING_USAGE
from tests.integration.test_billing_support import JAN, running_billing, usage
from tests.integration.wallet_fixtures import running_wallet
from tests.kafka_helpers import KafkaProbe

MEDIUM = VmSpec.of_tier("medium")


async def wait_until(check: Any, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


async def test_an_hour_of_many_vms_becomes_one_wallet_entry(env, db):
    settings = env.settings
    async with running_wallet(settings) as (_, wallet), \
            KafkaProbe(settings.kafka_bootstrap_servers) as kafka:
        org, wallet_id = await wallet.open(balance=1_000_000)
        vms = [uuid4() for _ in range(20)]
        others = [(uuid4(), uuid4()) for _ in range(3)]  # other wallets' VMs in the same hour
        await kafka.publish_many(settings.topic(METERING_USAGE.name), [
            *[(wallet_id, usage(vm, wallet_id, org, JAN, [(MEDIUM, 3600)])) for vm in vms],
            *[(w, usage(uuid4(), w, o, JAN, [(MEDIUM, 3600)])) for w, o in others]])
        async with running_billing(settings):  # the usage waits: it comes in one batch
            await wait_until(lambda: _count(db, wallet_id, 1))
            await wallet.assert_consistent(wallet_id)
        (row,) = await db.fetch(
            """SELECT amount, vm_ids, description FROM wallet.wallet_transactions
               WHERE wallet_id = $1 AND kind = 'usage_debit'""", wallet_id)
        assert row["amount"] == -20 * 41 and sorted(row["vm_ids"]) == sorted(vms)
        assert row["description"] == "Usage 00:00–01:00 UTC · 20 VMs · R8.20"
        assert (await wallet.status(wallet_id))["balance_minor"] == 1_000_000 - 20 * 41


async def test_entries_sent_again_after_a_crash_are_booked_once_corrections_after(env, db):
    """The first publication of the charges fails, as if billing had stopped right after its
    commit: the batch comes again and billing sends the entries it stored, with the same ids
    and lines, so the wallet books each once. A correction comes after them."""
    settings = env.settings
    debits_topic = settings.topic(BILLING_DEBITS.name)
    async with running_wallet(settings) as (_, wallet), \
            running_billing(settings) as (billing, _), \
            KafkaProbe(settings.kafka_bootstrap_servers) as kafka:
        org, wallet_id = await wallet.open(balance=1_000_000)
        vms = [uuid4() for _ in range(12)]
        sender = billing.relay.sender
        send = sender.send
        lost: list[int] = []

        async def lost_once(rows: Any) -> Any:
            rows = list(rows)
            if not lost and any(r[0] == debits_topic for r in rows):
                lost.append(len(rows))
                raise RuntimeError("stopped between commit and publish")
            return await send(rows)

        sender.send = lost_once  # type: ignore[method-assign]
        await kafka.publish_many(settings.topic(METERING_USAGE.name), [
            (wallet_id, usage(vm, wallet_id, org, JAN, [(MEDIUM, 3600)])) for vm in vms])

        async def usage_rows() -> list[asyncpg.Record]:
            return list(await db.fetch(
                """SELECT kind, amount, vm_ids, line_ids, vm_amounts, idempotency_key
                   FROM wallet.wallet_transactions
                   WHERE wallet_id = $1 AND kind LIKE 'usage_%' ORDER BY entry_id""", wallet_id))

        async def confirmed() -> bool:
            """The wallet booked every line and billing heard so."""
            return bool(await db.fetchval(
                """SELECT sum(cardinality(line_ids)) = 12 AND bool_and(confirmed)
                   FROM billing.usage_entries"""))

        await wait_until(confirmed)
        assert lost, "no charge went through the failing publication"
        # the hour's entries, read before the correction can add its own
        entries = await db.fetch(
            "SELECT entry_id, kind, vm_ids, line_ids, amounts FROM billing.usage_entries "
            "ORDER BY revision, entry_id")
        # the correction: VM 0 ran half the hour; on the partition after the repeat
        await kafka.publish(settings.topic(METERING_USAGE.name), wallet_id,
                            usage(vms[0], wallet_id, org, JAN, [(MEDIUM, 1800)], revision=1))
        await wait_until(lambda: _count(db, wallet_id, len(entries) + 1))

        *hour, correction = await usage_rows()
        # one row per entry billing stored (one for the hour when it came in one batch),
        # each line in exactly one
        stored = {f"usage:{e['entry_id']}": e for e in entries}
        assert sorted(r["idempotency_key"] for r in hour) == sorted(stored)
        for row in hour:
            assert row["line_ids"] == stored[row["idempotency_key"]]["line_ids"]
            assert row["kind"] == "usage_debit" and row["amount"] == -41 * len(row["vm_ids"])
        assert sorted(vm for r in hour for vm in r["vm_ids"]) == sorted(vms)
        assert (correction["kind"], correction["amount"], correction["vm_ids"]) == \
            ("usage_credit", 21, [vms[0]])
        lines = await db.fetch("SELECT line_id, entry_id FROM billing.lines")
        assert len(lines) == 13 and all(r["entry_id"] is not None for r in lines)
        status = await wallet.status(wallet_id)
        assert status["balance_minor"] == 1_000_000 - 12 * 41 + 21
        await wallet.assert_consistent(wallet_id)


async def _count(db: asyncpg.Connection, wallet_id: Any, rows: int) -> bool:
    return bool(await db.fetchval(
        """SELECT count(*) >= $2 FROM wallet.wallet_transactions
           WHERE wallet_id = $1 AND kind LIKE 'usage_%'""", wallet_id, rows))
