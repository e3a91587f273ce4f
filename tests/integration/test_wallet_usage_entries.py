"""Usage entries on the real broker and database: one ledger row per wallet and hour for many
VMs, booked once whatever message carries it, corrections after what they correct, each VM's
hold drawn by its part, statements with and without the VM detail, refunds of an entry and
of a VM within it."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from shared.contracts.wallet import (
    ChargeUsage,
    ChargeWallet,
    ProvisioningSucceeded,
    ReserveFunds,
    UsageCharge,
    UsageEntry,
)
from shared.money import MoneyModel
from shared.topics import (
    BILLING_DEBITS,
    DEAD_LETTER,
    PROVISIONING_OUTCOMES,
    PROVISIONING_REQUESTS,
    WALLET_DECISIONS,
    WALLET_EVENTS,
)
from tests.integration.wallet_fixtures import WalletClient, running_wallet
from tests.kafka_helpers import KafkaProbe

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 14, tzinfo=UTC)
WHOLE_TIME = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}


def entry(vm_amounts: dict[UUID, int], hour: datetime = T0, kind: str = "debit",
          revision: int = 0) -> UsageEntry:
    return UsageEntry(entry_id=uuid4(), kind=kind, hour_start=hour, revision=revision,  # type: ignore[arg-type]
                      amount_minor=sum(vm_amounts.values()), vm_ids=list(vm_amounts),
                      line_ids=[uuid4() for _ in vm_amounts], vm_amounts=list(vm_amounts.values()))


def charge(wallet_id: UUID, *entries: UsageEntry) -> ChargeUsage:
    return ChargeUsage(wallet_id=wallet_id, currency="ZAR", occurred_at=T0, entries=list(entries))


async def wait_for(check: Any, attempts: int = 200) -> Any:
    for _ in range(attempts):
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def usage_rows(db: asyncpg.Connection, wallet_id: UUID) -> list[asyncpg.Record]:
    return list(await db.fetch(
        """SELECT entry_id, kind, amount, idempotency_key, hold_drawn, vm_id, vm_ids, line_ids,
                  vm_amounts, description, occurred_at
           FROM wallet.wallet_transactions
           WHERE wallet_id = $1 AND kind IN ('usage_debit', 'usage_credit') ORDER BY entry_id""",
        wallet_id))


async def booked(db: asyncpg.Connection, wallet_id: UUID, entry_id: UUID) -> bool:
    """Whether the entry is in the ledger: once a later entry on the same partition is, every
    message before it was handled."""
    return bool(await db.fetchval(
        """SELECT EXISTS (SELECT 1 FROM wallet.wallet_transactions
                          WHERE wallet_id = $1 AND idempotency_key = $2)""",
        wallet_id, f"usage:{entry_id}"))


async def test_an_hour_of_many_vms_is_one_entry_drawing_each_vms_hold(env, db):
    vms = [uuid4() for _ in range(12)]
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        org, w = await wallet.open(balance=100_000)
        # VM 0 and VM 1 run on holds: their usage draws them down, by their own part
        for vm, amount in ((vms[0], 500), (vms[1], 5_000)):
            reserve = ReserveFunds(request_id=uuid4(), wallet_id=w, organisation_id=org,
                                   vm_id=vm, amount=MoneyModel(amount_minor=amount),
                                   occurred_at=T0)
            await kafka.publish(env.topic(PROVISIONING_REQUESTS.name), w, reserve)
            await kafka.read_count(env.topic(WALLET_DECISIONS.name), 1,
                                   where=lambda m, r=reserve: m["request_id"] == str(r.request_id))
            await kafka.publish(env.topic(PROVISIONING_OUTCOMES.name), w, ProvisioningSucceeded(
                request_id=reserve.request_id, wallet_id=w, vm_id=vm))
        hour = entry({vm: 41 * (n + 1) for n, vm in enumerate(vms)})  # 41 × 78 = 3,198
        await kafka.publish(env.topic(BILLING_DEBITS.name), w, charge(w, hour))
        await wait_for(lambda: booked(db, w, hour.entry_id))

        (row,) = await usage_rows(db, w)
        assert (row["kind"], row["amount"], row["vm_id"]) == ("usage_debit", -3_198, None)
        assert row["idempotency_key"] == f"usage:{hour.entry_id}"
        assert row["vm_ids"] == vms and row["line_ids"] == hour.line_ids
        assert row["vm_amounts"] == hour.vm_amounts
        assert row["description"] == "Usage 14:00–15:00 UTC · 12 VMs · R31.98"
        assert row["occurred_at"] == T0
        assert row["hold_drawn"] == 41 + 82  # VM 0's hold of 500 and VM 1's of 5,000, partly
        status = await wallet.status(w)
        assert status["balance_minor"] == 100_000 - 3_198
        assert status["held_minor"] == (500 - 41) + (5_000 - 82)
        await wallet.assert_consistent(w)
        applied = await kafka.read_count(
            env.topic(WALLET_EVENTS.name), 1, where=lambda m: m["type"] == "wallet.debits_applied")
        assert applied[0]["debit_ids"] == [str(hour.entry_id)]
        assert applied[0]["debited"]["amount_minor"] == 3_198


async def test_an_entry_sent_again_in_any_grouping_is_booked_once_corrections_after(env, db):
    vm_a, vm_b = uuid4(), uuid4()
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        _, w = await wallet.open(balance=10_000)
        first = entry({vm_a: 1_000, vm_b: 2_000})
        second = entry({vm_a: 400}, hour=T0 + timedelta(hours=1))
        correction = entry({vm_a: 300}, kind="credit", revision=1)
        last = entry({vm_b: 7}, hour=T0 + timedelta(hours=2))
        topic = env.topic(BILLING_DEBITS.name)
        await kafka.publish(topic, w, charge(w, first))
        await kafka.publish(topic, w, charge(w, first, second, correction))  # regrouped
        await kafka.publish(topic, w, charge(w, first))  # the same message again
        await kafka.publish(topic, w, charge(w, second).model_copy(update={"event_id": uuid4()}))
        await kafka.publish(topic, w, charge(w, last))
        await wait_for(lambda: booked(db, w, last.entry_id))

        rows = await usage_rows(db, w)
        assert [r["idempotency_key"] for r in rows] == [
            f"usage:{e.entry_id}" for e in (first, second, correction, last)]
        assert [r["amount"] for r in rows] == [-3_000, -400, 300, -7]
        assert rows[2]["description"] == \
            "Usage correction (revision 1) 14:00–15:00 UTC · 1 VM · R3.00"
        assert (await wallet.status(w))["balance_minor"] == 10_000 - 3_000 - 400 + 300 - 7
        await wallet.assert_consistent(w)


async def test_entries_whose_parts_do_not_add_up_are_dead_lettered(env, db):
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        _, w = await wallet.open(balance=10_000)
        good = entry({uuid4(): 100})
        bad = good.model_dump(mode="json") | {"entry_id": str(uuid4()), "amount_minor": 101}
        body = charge(w, good).model_dump(mode="json")
        body["entries"] = [bad]
        await kafka.publish(env.topic(BILLING_DEBITS.name), w, json.dumps(body).encode())
        await kafka.publish(env.topic(BILLING_DEBITS.name), w, charge(w, good))
        letters = await kafka.read_count(env.topic(DEAD_LETTER.name), 1)
        assert "add up to 100, not amount_minor 101" in letters[0]["reason"]
        await wait_for(lambda: booked(db, w, good.entry_id))
        assert len(await usage_rows(db, w)) == 1
        await wallet.assert_consistent(w)


async def book_month(kafka: KafkaProbe, env: Any, db: asyncpg.Connection, w: UUID,
                     vms: list[UUID]) -> list[UsageEntry]:
    """Two hours of usage for the VMs, the first corrected down for VM 0."""
    entries = [entry({vm: 1_000 for vm in vms}),
               entry({vm: 1_000 for vm in vms}, hour=T0 + timedelta(hours=1)),
               entry({vms[0]: 600}, kind="credit", revision=1)]
    await kafka.publish(env.topic(BILLING_DEBITS.name), w, charge(w, *entries))
    await wait_for(lambda: booked(db, w, entries[-1].entry_id))
    return entries


async def test_the_statement_lists_one_entry_per_hour_and_the_vms_on_request(env, db):
    vms = sorted([uuid4() for _ in range(3)], key=str)
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        _, w = await wallet.open(balance=10_000)
        entries = await book_month(kafka, env, db, w, vms)
        plain = (await wallet.http.get(f"/wallets/{w}/statement", params=WHOLE_TIME)).json()
        usage = [e for e in plain["entries"] if e["kind"].startswith("usage")]
        # by hour: the first hour's correction before the second hour
        assert [(e["amount_minor"], e["vm_count"]) for e in usage] == [
            (-3_000, 3), (600, 1), (-3_000, 3)]
        assert all("vms" not in e for e in plain["entries"])
        assert plain["closing_balance_minor"] == 10_000 - 6_000 + 600

        detailed = (await wallet.http.get(f"/wallets/{w}/statement",
                                          params={**WHOLE_TIME, "detail": "vm"})).json()
        usage = [e for e in detailed["entries"] if e["kind"].startswith("usage")]
        assert usage[0]["vms"] == [
            {"vm_id": str(vm), "line_id": str(line), "amount_minor": -1_000}
            for vm, line in zip(entries[0].vm_ids, entries[0].line_ids, strict=True)]
        assert usage[1]["vms"] == [{"vm_id": str(vms[0]), "line_id": str(entries[2].line_ids[0]),
                                    "amount_minor": 600}]
        assert detailed["closing_balance_minor"] == plain["closing_balance_minor"]

        def rows(text: str) -> list[dict[str, str]]:
            return list(csv.DictReader(io.StringIO(text)))

        flat = rows((await wallet.http.get(f"/wallets/{w}/statement",
                                           params={**WHOLE_TIME, "format": "csv"})).text)
        assert [r["record"] for r in flat] == ["balance", "entry", "entry", "entry", "entry",
                                               "balance"]
        assert flat[0]["kind"] == "opening_balance" and flat[-1]["kind"] == "closing_balance"
        assert sum(int(r["amount_minor"]) for r in flat[:-1]) == \
            int(flat[-1]["amount_minor"])
        first = next(r for r in flat if r["kind"] == "usage_debit")
        assert first["description"] == "Usage 14:00–15:00 UTC · 3 VMs · R30.00"
        detail = rows((await wallet.http.get(f"/wallets/{w}/statement", params={
            **WHOLE_TIME, "format": "csv", "detail": "vm"})).text)
        # (the top-up came through the webhook now, after March's usage)
        assert [r["record"] for r in detail] == ["balance", "entry", "vm", "vm", "vm",
                                                 "entry", "vm", "entry", "vm", "vm", "vm",
                                                 "entry", "balance"]
        # the VM rows break each entry down: summing the entries alone gives the balance
        vm_rows = [r for r in detail if r["record"] == "vm"]
        assert [(r["vm_id"], r["line_id"], int(r["amount_minor"])) for r in vm_rows[:3]] == [
            (str(vm), str(line), -1_000)
            for vm, line in zip(entries[0].vm_ids, entries[0].line_ids, strict=True)]
        assert all(r["entry_id"] == detail[1]["entry_id"] for r in vm_rows[:3])
        assert sum(int(r["amount_minor"]) for r in detail if r["record"] != "vm"
                   and r["kind"] != "closing_balance") == int(detail[-1]["amount_minor"])


async def refund(wallet: WalletClient, w: UUID, entry_id: int, amount: int,
                 vm_id: UUID | None = None, refund_id: UUID | None = None) -> Any:
    body: dict[str, Any] = {"refund_id": str(refund_id or uuid4()), "charge_entry_id": entry_id,
                            "amount_minor": amount}
    if vm_id is not None:
        body["vm_id"] = str(vm_id)
    return await wallet.http.post(f"/wallets/{w}/refunds", json=body)


async def test_refunds_of_an_entry_and_of_a_vm_within_it_stay_within_95_percent(env, db):
    vms = [uuid4() for _ in range(3)]
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        _, w = await wallet.open(balance=10_000)
        await book_month(kafka, env, db, w, vms)
        first, second, _ = [r["entry_id"] for r in await usage_rows(db, w)]
        # the first hour costs 3,000 - 600 = 2,400; VM 0's part of it 1,000 - 600 = 400
        over = await refund(wallet, w, first, 381, vm_id=vms[0])
        assert over.status_code == 422
        assert f"vm {vms[0]}'s part of the entry after the hour's correction credits: " \
               "cap 380" in over.json()["detail"]
        ok = await refund(wallet, w, first, 380, vm_id=vms[0])
        assert ok.status_code == 201, ok.text
        stranger = await refund(wallet, w, first, 1, vm_id=uuid4())
        assert stranger.status_code == 422 and "has no part in entry" in stranger.json()["detail"]
        # the whole entry: 95% of 2,400 is 2,280, 380 of it refunded for VM 0 already
        over = await refund(wallet, w, first, 1_901)
        assert over.status_code == 422
        assert "cap 2280, already refunded 380, requested 1901" in over.json()["detail"]
        refund_id = uuid4()
        ok = await refund(wallet, w, first, 1_900, refund_id=refund_id)
        assert ok.status_code == 201, ok.text
        again = await refund(wallet, w, first, 1_900, refund_id=refund_id)
        assert again.status_code == 201 and again.json()["applied"] is False
        other_vm = await refund(wallet, w, first, 1_900, vm_id=vms[1], refund_id=refund_id)
        assert other_vm.status_code == 409
        # VM 1 in the second hour: its own 95%, apart from the first hour's refunds
        ok = await refund(wallet, w, second, 950, vm_id=vms[1])
        assert ok.status_code == 201, ok.text
        credit = await refund(wallet, w, (await usage_rows(db, w))[2]["entry_id"], 1)
        assert credit.status_code == 422 and "only a charge" in credit.json()["detail"]

        assert (await wallet.status(w))["balance_minor"] == 10_000 - 6_000 + 600 + 380 \
            + 1_900 + 950
        await wallet.assert_consistent(w)
        refunds = await db.fetch(
            """SELECT vm_id, refunds_entry_id, amount FROM wallet.wallet_transactions
               WHERE wallet_id = $1 AND kind = 'refund' ORDER BY entry_id""", w)
        assert [(r["vm_id"], r["refunds_entry_id"], r["amount"]) for r in refunds] == [
            (vms[0], first, 380), (None, first, 1_900), (vms[1], second, 950)]


async def test_a_line_booked_before_entries_and_sent_again_as_an_entry_is_booked_once(env, db):
    """billing_0003 made each line billed before usage entries an entry of its own, under its
    line id: a redelivery across the upgrade sends it as an entry, which the wallet had
    booked per line (`debit:<line id>`). It keeps that key."""
    vm = uuid4()
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        _, w = await wallet.open(balance=10_000)
        line = uuid4()
        topic = env.topic(BILLING_DEBITS.name)
        await kafka.publish(topic, w, ChargeWallet(
            wallet_id=w, currency="ZAR", occurred_at=T0, charges=[UsageCharge(
                line_id=line, kind="debit", amount_minor=41, vm_id=vm, period_start=T0)]))
        again = UsageEntry(entry_id=line, kind="debit", hour_start=T0, revision=0,
                           amount_minor=41, vm_ids=[vm], line_ids=[line], vm_amounts=[41])
        last = entry({vm: 7}, hour=T0 + timedelta(hours=1))
        await kafka.publish(topic, w, charge(w, again))
        await kafka.publish(topic, w, charge(w, last))
        await wait_for(lambda: booked(db, w, last.entry_id))
        rows = await usage_rows(db, w)
        assert [(r["idempotency_key"], r["amount"]) for r in rows] == [
            (f"debit:{line}", -41), (f"usage:{last.entry_id}", -7)]
        assert (await wallet.status(w))["balance_minor"] == 10_000 - 48
        await wallet.assert_consistent(w)
