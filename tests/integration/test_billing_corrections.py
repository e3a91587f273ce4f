"""Duplicate and corrected usage: one line per usage event, corrections bill the difference,
a late correction of a closed month lands on the next statement, bad usage is reported."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from services.billing.domain import line_id
from shared.contracts.metering import HourlyUsage
from shared.contracts.vm import VmSpec
from shared.contracts.wallet import DebitsApplied
from shared.money import MoneyModel
from shared.topics import BILLING_DEBITS, DEAD_LETTER, METERING_USAGE, WALLET_EVENTS
from tests.integration.test_billing_support import (
    FEB,
    JAN,
    expected_vm_month,
    month_closed,
    publish_watermarks,
    running_billing,
    usage,
)
from tests.integration.wallet_fixtures import running_wallet
from tests.kafka_helpers import KafkaProbe, settled

MEDIUM = VmSpec.of_tier("medium")
MAR = FEB + timedelta(days=28)


async def test_duplicates_and_corrections(env, db: asyncpg.Connection):
    settings = env.settings
    topic = settings.topic(METERING_USAGE.name)
    async with running_wallet(settings) as (_, wallet), running_billing(settings) as (_, http), \
            KafkaProbe(settings.kafka_bootstrap_servers) as kafka:
        org, wallet_id = await wallet.open(balance=1_000_000)
        vm = uuid4()

        def hour(h: int, seconds: int, revision: int = 0) -> tuple[object, HourlyUsage]:
            return wallet_id, usage(vm, wallet_id, org, JAN + timedelta(hours=h),
                                    [(MEDIUM, seconds)], revision)

        first = [hour(h, 3600) for h in range(10)]
        await kafka.publish_many(topic, first)
        await kafka.publish_many(topic, [
            first[0], first[0],  # duplicates
            hour(1, 1800, 1),  # a correction down: a credit
            hour(2, 1800, 1), hour(2, 3600, 2),  # down, then back up
            hour(3, 600, 2), hour(3, 1200, 1),  # revision 1 arrives after revision 2: stale
        ])
        bad = usage(vm, wallet_id, org, JAN + timedelta(hours=20), [(MEDIUM, 3600)])
        bad_json = bad.model_dump_json().replace('"seconds":3600,"segments"',
                                                 '"seconds":3000,"segments"')
        await kafka.publish(topic, wallet_id, bad_json.encode())
        await publish_watermarks(kafka, settings, FEB)
        january = (await month_closed(kafka, settings, [wallet_id], "2026-01"))[wallet_id]

        final = [3600, 1800, 3600, 600] + [3600] * 6
        charge, seconds = expected_vm_month([[(MEDIUM, s)] for s in final])
        (summary,) = january["vms"]
        assert summary["amount"]["amount_minor"] == charge
        assert summary["seconds_metered"] == seconds
        # debits: ten hours of 41 cents, and 21 back up; credits: 21, 21 and 35
        assert january["charges"]["amount_minor"] == 10 * 41 + 21
        assert january["credits"]["amount_minor"] == 1_000_000 + 21 + 21 + 35
        assert len(january["mismatches"]) == 1
        assert "not billed" in january["mismatches"][0]
        assert "segments add up to 3600 s but the usage says 3000 s" in january["mismatches"][0]
        letters = await kafka.read_count(settings.topic(DEAD_LETTER.name), 1)
        assert "segments add up to" in letters[0]["reason"]

        lines = await db.fetch(
            """SELECT hour_start, revision, amount, stale FROM billing.lines
               WHERE vm_id = $1 ORDER BY hour_start, revision""", vm)
        assert len(lines) == 10 + 1 + 2 + 2  # one per distinct usage event
        assert [(r["revision"], r["amount"], r["stale"]) for r in lines
                if r["hour_start"] == JAN + timedelta(hours=3)] == [(0, 41, False),
                                                                     (1, 0, True),
                                                                     (2, -35, False)]
        kinds = await db.fetch(
            """SELECT kind, count(*) AS n, sum(amount) AS total FROM wallet.wallet_transactions
               WHERE wallet_id = $1 GROUP BY kind""", wallet_id)
        ledger = {r["kind"]: (r["n"], r["total"]) for r in kinds}
        assert ledger["usage_debit"] == (11, -(10 * 41 + 21))
        assert ledger["usage_credit"] == (3, 21 + 21 + 35)

        # a correction of closed January arrives: it is billed, on February's statement
        await kafka.publish_many(topic, [hour(4, 0, 1)])
        await publish_watermarks(kafka, settings, MAR)
        february = (await month_closed(kafka, settings, [wallet_id], "2026-02"))[wallet_id]
        assert february["opening_balance"] == january["closing_balance"]
        assert february["credits"]["amount_minor"] == 41
        assert february["closing_balance"]["amount_minor"] == \
            january["closing_balance"]["amount_minor"] + 41
        assert "late correction of 2026-01" in february["notes"][0]
        assert february["mismatches"] == []
        unchanged = (await http.get(f"/wallets/{wallet_id}/statements/2026-01")).json()
        assert unchanged["closing_balance"] == january["closing_balance"]
        status = await wallet.status(wallet_id)
        assert status["balance_minor"] == february["closing_balance"]["amount_minor"]
        await wallet.assert_consistent(wallet_id)


async def test_debits_the_wallet_never_confirms_close_after_the_grace_as_mismatches(env, db):
    settings = env.settings
    topic = settings.topic(METERING_USAGE.name)
    async with running_wallet(settings), running_billing(settings) as (_, http), \
            KafkaProbe(settings.kafka_bootstrap_servers) as kafka:
        ghost, org, vm = uuid4(), uuid4(), uuid4()  # a wallet the wallet service never opened
        await kafka.publish_many(topic, [
            (ghost, usage(vm, ghost, org, JAN + timedelta(hours=h), [(MEDIUM, 3600)]))
            for h in range(3)])
        await publish_watermarks(kafka, settings, FEB)
        async with asyncio.timeout(20):
            while await db.fetchval("SELECT count(*) FROM billing.month_closes") == 0:
                await asyncio.sleep(0.05)
        pending = await http.get(f"/wallets/{ghost}/statements/2026-01")
        assert pending.status_code == 404 and "waiting for the wallet" in pending.json()["detail"]

        await publish_watermarks(kafka, settings, FEB + timedelta(hours=24))
        statement = (await month_closed(kafka, settings, [ghost], "2026-01"))[ghost]
        assert statement["charges"]["amount_minor"] == 3 * 41
        assert statement["vms"][0]["debited"]["amount_minor"] == 0
        assert any("3 debits/credits totalling 123 not confirmed" in m
                   for m in statement["mismatches"])
        assert any("no wallet.opened" in n for n in statement["notes"])


async def test_charges_lost_between_commit_and_publish_are_sent_again(env, db):
    """Charges are published after the lines commit, not through the outbox. Here the
    first publication of charges fails, as if billing had stopped right after the commit:
    the batch comes again, the usage is already billed, and its charges are sent again —
    the wallet books each exactly once."""
    settings = env.settings
    debits_topic = settings.topic(BILLING_DEBITS.name)
    async with running_wallet(settings) as (_, wallet), \
            running_billing(settings) as (billing, _), \
            KafkaProbe(settings.kafka_bootstrap_servers) as kafka:
        org, wallet_id = await wallet.open(balance=1_000_000)
        vm = uuid4()
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
            (wallet_id, usage(vm, wallet_id, org, JAN + timedelta(hours=h), [(MEDIUM, 3600)]))
            for h in range(5)])
        booked = "SELECT count(*) FROM wallet.wallet_transactions WHERE kind = 'usage_debit'"
        for _ in range(300):
            if await db.fetchval(booked) >= 5:
                break
            await asyncio.sleep(0.1)
        # billing has sent every charge (again, after the failure), the wallet booked them
        await settled(kafka, settings, "billing", [METERING_USAGE])
        await settled(kafka, settings, "wallet", [BILLING_DEBITS])
        assert lost, "no charge went through the failing publication"
        assert await db.fetchval("SELECT count(*) FROM billing.lines") == 5
        debits = await db.fetch(
            """SELECT amount FROM wallet.wallet_transactions
               WHERE wallet_id = $1 AND kind = 'usage_debit'""", wallet_id)
        assert sorted(r["amount"] for r in debits) == [-41] * 5
        await wallet.assert_consistent(wallet_id)


async def test_a_batchs_usage_goes_to_each_wallet_as_one_entry_per_hour_corrections_after(env):
    """One `ChargeUsage` per wallet and batch, one entry per wallet and hour naming the lines
    (VMs) it covers, in hour order, a correction's entry after the entry it corrects."""
    settings = env.settings
    async with KafkaProbe(settings.kafka_bootstrap_servers) as kafka:
        wallets = {uuid4(): uuid4() for _ in range(2)}  # wallet -> organisation
        vms = {w: [uuid4(), uuid4(), uuid4()] for w in wallets}
        published = [(w, usage(vm, w, org, JAN + timedelta(hours=h), [(MEDIUM, 3600)]))
                     for h in range(3) for w, org in wallets.items() for vm in vms[w]]
        first_wallet, first_vm = published[0][0], published[0][1].vm_id
        correction = usage(first_vm, first_wallet, wallets[first_wallet], JAN,
                           [(MEDIUM, 1800)], revision=1)
        # the correction first in the batch: its entry still goes after the one it corrects
        await kafka.publish_many(settings.topic(METERING_USAGE.name),
                                 [*published[:1], (first_wallet, correction), *published[1:]])
        async with running_billing(settings):  # the usage waits: it comes in one batch
            messages = await kafka.read(settings.topic(BILLING_DEBITS.name), until=lambda ms: (
                sum(len(e["vm_ids"]) for m in ms for e in m["entries"]) >= len(published) + 1))
    assert {m["type"] for m in messages} == {"billing.charge_usage"}
    for w in wallets:
        entries = [e for m in messages if m["wallet_id"] == str(w) for e in m["entries"]]
        expected = [(JAN + timedelta(hours=h), 0, "debit", [str(vm) for vm in vms[w]], [41] * 3)
                    for h in range(3)]
        if w == first_wallet:
            expected.insert(1, (JAN, 1, "credit", [str(first_vm)], [21]))
        assert [(datetime.fromisoformat(e["hour_start"]), e["revision"], e["kind"], e["vm_ids"],
                 e["vm_amounts"]) for e in entries] == expected
        for e in entries:
            lines = [line_id(UUID(vm), datetime.fromisoformat(e["hour_start"]), e["revision"])
                     for vm in e["vm_ids"]]
            assert e["line_ids"] == [str(x) for x in lines]
            assert e["amount_minor"] == sum(e["vm_amounts"])


async def test_what_the_wallet_booked_is_confirmed_and_differences_become_issues(env, db):
    """`DebitsApplied` confirms billing's entries; ids billing has no entry for, and sums
    that differ from billing's entries, are recorded as issues for the next statement."""
    settings = env.settings
    async with running_billing(settings), \
            KafkaProbe(settings.kafka_bootstrap_servers) as kafka:
        wallet_id, org, vm = uuid4(), uuid4(), uuid4()
        await kafka.publish_many(settings.topic(METERING_USAGE.name), [
            (wallet_id, usage(vm, wallet_id, org, JAN + timedelta(hours=h), [(MEDIUM, 3600)]))
            for h in range(2)])
        for _ in range(300):
            if await db.fetchval("SELECT count(*) FROM billing.usage_entries") == 2:
                break
            await asyncio.sleep(0.1)
        entries = [r["entry_id"] for r in await db.fetch(
            "SELECT entry_id FROM billing.usage_entries ORDER BY hour_start")]
        stranger = uuid4()

        def applied(debit_ids: list[UUID], debited: int) -> DebitsApplied:
            return DebitsApplied(wallet_id=wallet_id, debit_ids=debit_ids,
                                 debited=MoneyModel(amount_minor=debited),
                                 credited=MoneyModel(amount_minor=0),
                                 balance_after=MoneyModel(amount_minor=0))

        matching, wrong = applied([entries[0]], 41), applied([entries[1], stranger], 100)
        for event in (matching, wrong, wrong):  # a replay records nothing twice
            await kafka.publish(settings.topic(WALLET_EVENTS.name), wallet_id, event)
        for _ in range(300):
            if await db.fetchval("SELECT count(*) FROM billing.issues") >= 2:
                break
            await asyncio.sleep(0.1)
        await settled(kafka, settings, "billing", [WALLET_EVENTS])  # the replay too
    confirmed = await db.fetch("SELECT entry_id FROM billing.usage_entries WHERE confirmed")
    assert {r["entry_id"] for r in confirmed} == set(entries)
    issues = sorted(r["detail"] for r in await db.fetch(
        "SELECT detail FROM billing.issues WHERE wallet_id = $1", wallet_id))
    assert len(issues) == 2
    assert issues[0].startswith("wallet booked 1 debits/credits billing has no entry for")
    assert str(stranger) in issues[0]
    assert issues[1].startswith("wallet debited 100 and credited 0 for entries of 41 and 0")
