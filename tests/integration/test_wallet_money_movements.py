"""Debits, credits, top-ups, refunds, statements and bad input, on the real broker and database."""

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from aiokafka.structs import ConsumerRecord

from shared.contracts.wallet import (
    ChargeWallet,
    CreditWallet,
    DebitWallet,
    ReserveFunds,
    TopUpWallet,
    UsageCharge,
)
from shared.money import MoneyModel
from shared.topics import (
    BILLING_DEBITS,
    CLOCK_TICKS,
    DEAD_LETTER,
    PROVISIONING_OUTCOMES,
    PROVISIONING_REQUESTS,
    WALLET_DECISIONS,
    WALLET_EVENTS,
    WALLET_TOPUPS,
)
from shared.webhooks import webhook_headers
from tests.integration.wallet_fixtures import running_wallet
from tests.kafka_helpers import KafkaProbe, settled

WALLET_INPUTS = (PROVISIONING_REQUESTS, PROVISIONING_OUTCOMES, BILLING_DEBITS, WALLET_TOPUPS,
                 CLOCK_TICKS)

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def debit(wallet_id, amount, vm_id=None, hour=0, currency="ZAR") -> DebitWallet:
    return DebitWallet(debit_id=uuid4(), wallet_id=wallet_id, vm_id=vm_id,
                       amount=MoneyModel(amount_minor=amount, currency=currency),
                       period_start=T0 + timedelta(hours=hour), occurred_at=T0)


async def wallet_settled(kafka: KafkaProbe, env: Any) -> None:
    """Barrier: the wallet has handled all it was sent and published what that caused."""
    await settled(kafka, env.settings, "wallet", WALLET_INPUTS, database_url=env.database_url)


async def wait_for(check, attempts: int = 150):
    for _ in range(attempts):
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached")


async def test_debits_replayed_apply_once_and_report_thresholds(env):
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        _, w = await wallet.open(balance=10_000, threshold=5_000)
        debits = [debit(w, 3_000, hour=h) for h in range(4)]  # 12,000 in all: past zero
        topic = env.topic(BILLING_DEBITS.name)
        for d in debits + debits:  # every debit delivered twice
            await kafka.publish(topic, w, d)
        # A new message for an already booked debit id: still booked once.
        await kafka.publish(topic, w, debits[0].model_copy(update={"event_id": uuid4()}))

        async def settled():
            s = await wallet.status(w)
            return s if s["balance_minor"] == -2_000 else None

        status = await wait_for(settled)
        assert status["depleted"] and status["low_balance"]
        await wallet.assert_consistent(w)
        def booked(ms):
            return sum(len(m.get("debit_ids", [])) for m in ms) >= len(debits)

        events = await kafka.read(env.topic(WALLET_EVENTS.name), timeout=15, until=lambda ms: (
            {"wallet.low_balance", "wallet.depleted"} <= {m["type"] for m in ms}
            and booked(ms)))
        types = [m["type"] for m in events]
        assert types.count("wallet.low_balance") == 1
        assert types.count("wallet.depleted") == 1
        applied = [m for m in events if m["type"] == "wallet.debits_applied"]
        assert sorted(i for m in applied for i in m["debit_ids"]) == \
            sorted(str(d.debit_id) for d in debits)

        restored = await wallet.top_up(w, 10_000)
        assert restored.status_code == 200
        events = await kafka.read(env.topic(WALLET_EVENTS.name), timeout=10, until=lambda ms: (
            "wallet.funds_restored" in {m["type"] for m in ms}))
        assert any(m["type"] == "wallet.funds_restored" and m["available"]["amount_minor"] == 8_000
                   for m in events)


def charges(wallet_id, items, currency="ZAR") -> ChargeWallet:
    """A ChargeWallet of (line_id, kind, amount) items."""
    return ChargeWallet(wallet_id=wallet_id, currency=currency, occurred_at=T0, charges=[
        UsageCharge(line_id=line, kind=kind, amount_minor=amount, vm_id=None,
                    period_start=T0 + timedelta(hours=n), description=f"usage {n}")
        for n, (line, kind, amount) in enumerate(items)])


async def test_charges_sent_again_in_other_groupings_are_booked_once(env):
    """Billing re-sends a batch's charges after a crash, grouped by the batch it replays:
    each charge is booked once by its line id, whatever message carries it."""
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        _, w = await wallet.open(balance=10_000)
        lines = [uuid4() for _ in range(5)]
        first = charges(w, [(lines[0], "debit", 1_000), (lines[1], "debit", 2_000),
                            (lines[2], "debit", 3_000)])
        regrouped = charges(w, [(lines[1], "debit", 2_000), (lines[2], "debit", 3_000),
                                (lines[3], "debit", 400), (lines[4], "credit", 500)])
        topic = env.topic(BILLING_DEBITS.name)
        await kafka.publish(topic, w, first)
        await kafka.publish(topic, w, regrouped)
        await kafka.publish(topic, w, first)
        await kafka.publish(topic, w, charges(w, [(uuid4(), "debit", 100)], currency="USD"))

        letters = await kafka.read_count(env.topic(DEAD_LETTER.name), 1)
        assert "USD" in letters[0]["reason"]

        async def settled():
            s = await wallet.status(w)
            return s if s["balance_minor"] == 10_000 - 6_400 + 500 else None

        await wait_for(settled)
        await wallet_settled(kafka, env)  # the repeats, and the events they caused
        assert (await wallet.status(w))["balance_minor"] == 4_100
        await wallet.assert_consistent(w)
        events = await kafka.read_to_end(env.topic(WALLET_EVENTS.name))
        applied = [m for m in events if m["type"] == "wallet.debits_applied"]
        assert sorted(i for m in applied for i in m["debit_ids"]) == \
            sorted(str(line) for line in lines[:4])
        assert [i for m in applied for i in m["credit_ids"]] == [str(lines[4])]
        assert sum(m["debited"]["amount_minor"] for m in applied) == 6_400


async def test_a_batch_with_charges_booked_before_runs_again_without_them(env, db):
    """The ledger's unique key is the wallet's claim on charges: a batch naming a charge
    booked before (here once in a ChargeWallet, once as a single DebitWallet) fails on that
    key, rolls back and is booked again without it."""
    async with running_wallet(env.settings) as (service, wallet):
        _, w = await wallet.open(balance=10_000)
        lines = [uuid4() for _ in range(3)]
        topic = env.topic(BILLING_DEBITS.name)

        def records(*messages):
            return tuple(ConsumerRecord(topic, 0, n, 0, 0, None,
                                        m.model_dump_json().encode(), None, 0, 0, ())
                         for n, m in enumerate(messages))

        await service.handlers.on_billing_charges(records(
            charges(w, [(lines[0], "debit", 1_000)])))
        legacy = DebitWallet(debit_id=lines[0], wallet_id=w, amount=MoneyModel(
            amount_minor=1_000), period_start=T0, occurred_at=T0)
        await service.handlers.on_billing_charges(records(
            charges(w, [(lines[0], "debit", 1_000), (lines[1], "debit", 2_000)]), legacy,
            charges(w, [(lines[2], "credit", 500)])))
        assert (await wallet.status(w))["balance_minor"] == 10_000 - 3_000 + 500
        keys = await db.fetch(
            """SELECT idempotency_key FROM wallet.wallet_transactions
               WHERE wallet_id = $1 AND kind IN ('usage_debit', 'usage_credit')""", w)
        assert sorted(r["idempotency_key"] for r in keys) == sorted(
            [f"debit:{lines[0]}", f"debit:{lines[1]}", f"credit:{lines[2]}"])
        await wallet.assert_consistent(w)


async def test_usage_draws_down_the_vms_hold(env):
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        org, w = await wallet.open(balance=100_000)
        vm = uuid4()
        reserve = ReserveFunds(request_id=uuid4(), wallet_id=w, organisation_id=org, vm_id=vm,
                               amount=MoneyModel(amount_minor=15_000), occurred_at=T0)
        await kafka.publish(env.topic(PROVISIONING_REQUESTS.name), w, reserve)
        await kafka.read_count(env.topic(WALLET_DECISIONS.name), 1)
        from shared.contracts.wallet import ProvisioningSucceeded

        await kafka.publish(env.topic(PROVISIONING_OUTCOMES.name), w, ProvisioningSucceeded(
            request_id=reserve.request_id, wallet_id=w, vm_id=vm))
        await kafka.publish_many(env.topic(BILLING_DEBITS.name),
                                 [(w, debit(w, 2_000, vm_id=vm, hour=h)) for h in range(3)])

        async def drawn():
            s = await wallet.status(w)
            return s if s["balance_minor"] == 94_000 else None

        status = await wait_for(drawn)
        assert status["held_minor"] == 9_000
        assert status["available_minor"] == 85_000  # usage inside the hold leaves available as is
        await wallet.assert_consistent(w)


async def test_credits_and_kafka_top_ups(env):
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        _, w = await wallet.open(balance=1_000)
        credit = CreditWallet(credit_id=uuid4(), wallet_id=w,
                              amount=MoneyModel(amount_minor=250))
        topup = TopUpWallet(payment_id="auto-1", wallet_id=w,
                            amount=MoneyModel(amount_minor=5_000))
        for _ in range(2):
            await kafka.publish(env.topic(BILLING_DEBITS.name), w, credit)
            await kafka.publish(env.topic(WALLET_TOPUPS.name), w, topup)

        async def settled():
            s = await wallet.status(w)
            return s if s["balance_minor"] == 6_250 else None

        await wait_for(settled)
        await wallet_settled(kafka, env)
        assert (await wallet.status(w))["balance_minor"] == 6_250
        await wallet.assert_consistent(w)


async def test_webhook_signature_and_idempotency(env):
    secret = env.settings.payment_webhook_secret
    async with running_wallet(env.settings) as (_, wallet):
        _, w = await wallet.open()
        forged = await wallet.top_up(w, 5_000, secret="not-the-secret")
        assert forged.status_code == 401
        assert "signature" in forged.json()["detail"]
        unsigned = await wallet.http.post("/webhooks/payments", content=b"{}")
        assert unsigned.status_code == 401
        assert (await wallet.status(w))["balance_minor"] == 0

        assert (await wallet.top_up(w, 5_000, payment_id="pay-1")).json()["applied"] is True
        assert (await wallet.top_up(w, 5_000, payment_id="pay-1")).json()["applied"] is False
        assert (await wallet.status(w))["balance_minor"] == 5_000

        too_big = await wallet.top_up(w, env.settings.max_topup_minor + 1)
        assert too_big.status_code == 422 and "maximum" in too_big.json()["detail"]
        wrong_currency = await wallet.top_up(w, 100, currency="USD")
        assert wrong_currency.status_code == 422 and "USD" in wrong_currency.json()["detail"]
        unknown = await wallet.top_up(uuid4(), 100)
        assert unknown.status_code == 404
        body = json.dumps({"payment_id": "pay-naive", "wallet_id": str(w), "amount_minor": 100,
                           "status": "succeeded", "occurred_at": "2026-01-01T10:00:00"}).encode()
        naive = await wallet.http.post("/webhooks/payments", content=body,
                                       headers=webhook_headers(secret, body))
        assert naive.status_code == 422 and "timezone" in naive.json()["detail"]
        assert (await wallet.status(w))["balance_minor"] == 5_000
        await wallet.assert_consistent(w)


async def test_refunds_capped_at_95_percent_and_statement(env):
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        _, w = await wallet.open()
        await wallet.top_up(w, 100_000, payment_id="opening")
        await kafka.publish(env.topic(BILLING_DEBITS.name), w, debit(w, 10_000, hour=1))

        async def charged():
            s = await wallet.status(w)
            return s if s["balance_minor"] == 90_000 else None

        await wait_for(charged)
        start, end = "2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z"
        statement = (await wallet.http.get(f"/wallets/{w}/statement",
                                           params={"from": start, "to": end})).json()
        charge = next(e for e in statement["entries"] if e["kind"] == "usage_debit")
        refunds = f"/wallets/{w}/refunds"

        def refund(amount: int, entry_id: int = charge["entry_id"], refund_id: str = ""
                   ) -> dict[str, object]:
            return {"refund_id": refund_id or str(uuid4()), "charge_entry_id": entry_id,
                    "amount_minor": amount}

        first_body = refund(9_000)
        first = await wallet.http.post(refunds, json=first_body)
        assert first.status_code == 201, first.text
        replay = await wallet.http.post(refunds, json=first_body)  # a retried POST
        assert replay.status_code == 201 and replay.json()["applied"] is False
        assert replay.json()["entry_id"] == first.json()["entry_id"]
        reused = await wallet.http.post(refunds, json={**first_body, "amount_minor": 1})
        assert reused.status_code == 409 and "already booked" in reused.json()["detail"]
        unnamed = await wallet.http.post(refunds, json={"charge_entry_id": charge["entry_id"],
                                                        "amount_minor": 1})
        assert unnamed.status_code == 422  # a refund must be named, or a retry is a second
        over = await wallet.http.post(refunds, json=refund(501))
        assert over.status_code == 422 and "95%" in over.json()["detail"]
        rest = await wallet.http.post(refunds, json=refund(500))
        assert rest.status_code == 201
        not_a_charge = await wallet.http.post(refunds, json=refund(
            1, entry_id=statement["entries"][0]["entry_id"]))
        assert not_a_charge.status_code == 422
        assert (await wallet.status(w))["balance_minor"] == 99_500
        await wallet.assert_consistent(w)

        statement = (await wallet.http.get(f"/wallets/{w}/statement",
                                           params={"from": start, "to": end})).json()
        assert statement["opening_balance_minor"] == 0
        assert statement["closing_balance_minor"] == 99_500
        # Split at the charge: the later window opens where the earlier one closes (the
        # opening is today's balance less what came since), and one after everything opens
        # and closes at the balance.
        mid = charge["occurred_at"]
        before, after, later = [(await wallet.http.get(
            f"/wallets/{w}/statement", params={"from": a, "to": b})).json()
            for a, b in ((start, mid), (mid, end), ("2099-01-01T00:00:00Z", end))]
        assert before["closing_balance_minor"] == after["opening_balance_minor"]
        assert after["opening_balance_minor"] + sum(
            e["amount_minor"] for e in after["entries"]) == 99_500
        assert after["opening_balance_minor"] == sum(e["amount_minor"] for e in before["entries"])
        assert later["opening_balance_minor"] == later["closing_balance_minor"] == 99_500
        assert [e["kind"] for e in statement["entries"]].count("refund") == 2
        text = (await wallet.http.get(f"/wallets/{w}/statement",
                                      params={"from": start, "to": end, "format": "csv"})).text
        rows = list(csv.DictReader(io.StringIO(text)))
        assert rows[0]["kind"] == "opening_balance" and rows[-1]["kind"] == "closing_balance"
        assert sum(int(r["amount_minor"]) for r in rows[1:-1]) == 99_500
        bad = await wallet.http.get(f"/wallets/{w}/statement",
                                    params={"from": end, "to": start})
        assert bad.status_code == 422
        for naive_or_no_utc in ("2026-01-01T00:00:00", "0001-01-01T00:30:00+01:00"):
            bad = await wallet.http.get(f"/wallets/{w}/statement",
                                        params={"from": naive_or_no_utc, "to": end})
            assert bad.status_code == 422, bad.text


async def test_a_charge_corrected_down_is_refundable_only_on_what_is_left(env):
    """Billing debited a VM hour 10,000 and credited 6,000 back for a correction: 95% of
    the 4,000 still charged may be refunded, not 95% of 10,000."""
    vm = uuid4()
    hour = T0 + timedelta(hours=3)
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        _, w = await wallet.open(balance=100_000)

        async def charge_hour(*charges: tuple[str, int], balance_after: int
                              ) -> dict[str, Any]:
            """Book the hour's charges; returns the latest usage debit's ledger entry."""
            await kafka.publish(env.topic(BILLING_DEBITS.name), w, ChargeWallet(
                wallet_id=w, currency="ZAR", occurred_at=T0, charges=[UsageCharge(
                    line_id=uuid4(), kind=kind, amount_minor=amount, vm_id=vm,
                    period_start=hour) for kind, amount in charges]))

            async def booked() -> dict[str, Any] | None:
                s = await wallet.status(w)
                return s if s["balance_minor"] == balance_after else None

            await wait_for(booked)
            statement = (await wallet.http.get(f"/wallets/{w}/statement", params={
                "from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"})).json()
            return [e for e in statement["entries"] if e["kind"] == "usage_debit"][-1]

        async def refund(entry: dict[str, Any], amount: int) -> Any:
            return await wallet.http.post(f"/wallets/{w}/refunds", json={
                "refund_id": str(uuid4()), "charge_entry_id": entry["entry_id"],
                "amount_minor": amount})

        charge = await charge_hour(("debit", 10_000), ("credit", 6_000), balance_after=96_000)
        over = await refund(charge, 3_801)
        assert over.status_code == 422 and "correction credits" in over.json()["detail"]
        ok = await refund(charge, 3_800)
        assert ok.status_code == 201, ok.text
        assert (await wallet.status(w))["balance_minor"] == 99_800
        # later revisions charge the hour 5,000 more, then credit 4,000 back: it now costs
        # 5,000, so its refunds together stay within 4,750, of which 3,800 are refunded
        later = await charge_hour(("debit", 5_000), ("credit", 4_000), balance_after=98_800)
        assert later["amount_minor"] == -5_000
        beyond = await refund(later, 951)
        assert beyond.status_code == 422 and "still costs" in beyond.json()["detail"]
        within = await refund(later, 950)
        assert within.status_code == 201, within.text
        await wallet.assert_consistent(w)


async def test_status_reports_burn_rate_and_runway(env):
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        _, w = await wallet.open(balance=48_000)
        await kafka.publish_many(env.topic(BILLING_DEBITS.name),
                                 [(w, debit(w, 100, hour=h)) for h in range(24)])

        async def burned():
            s = await wallet.status(w)
            return s if s["balance_minor"] == 45_600 else None

        status = await wait_for(burned)
        assert status["burn_rate_per_hour_minor"] == 100
        assert status["runway_hours"] == pytest.approx(456.0)
        assert status["balance"] == "R456.00"


@pytest.mark.parametrize("topic", [PROVISIONING_REQUESTS, PROVISIONING_OUTCOMES, BILLING_DEBITS,
                                   WALLET_TOPUPS, CLOCK_TICKS])
async def test_poison_messages_go_to_the_dead_letter_topic(env, topic):
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        _, w = await wallet.open(balance=10_000)
        name = env.topic(topic.name)
        await kafka.publish(name, w, b"this is not json")
        await kafka.publish(name, w, b'{"type": "wallet.reserve_funds", "amount": "lots"}')
        await kafka.read_count(env.topic(DEAD_LETTER.name), 2)
        await wallet_settled(kafka, env)
        letters = await kafka.read_to_end(env.topic(DEAD_LETTER.name))
        assert len(letters) == 2
        assert {letter["source_topic"] for letter in letters} == {name}
        assert all(letter["reason"].startswith("invalid message") for letter in letters)
        assert letters[0]["payload"] == "this is not json"
        # The consumer is still alive and balances are untouched.
        await kafka.publish(env.topic(BILLING_DEBITS.name), w, debit(w, 1_000))

        async def alive():
            s = await wallet.status(w)
            return s if s["balance_minor"] == 9_000 else None

        await wait_for(alive)
        await wallet.assert_consistent(w)


async def test_debits_for_unknown_wallet_or_wrong_currency_are_dead_lettered(env):
    async with running_wallet(env.settings) as (_, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        _, w = await wallet.open(balance=10_000)
        topic = env.topic(BILLING_DEBITS.name)
        await kafka.publish(topic, w, debit(uuid4(), 100))
        await kafka.publish(topic, w, debit(w, 100, currency="USD"))
        await kafka.read_count(env.topic(DEAD_LETTER.name), 2)
        await wallet_settled(kafka, env)
        letters = await kafka.read_to_end(env.topic(DEAD_LETTER.name))
        reasons = sorted(letter["reason"] for letter in letters)
        assert len(reasons) == 2, reasons
        assert "USD" in reasons[0] and reasons[1].startswith("unknown wallet")
        assert (await wallet.status(w))["balance_minor"] == 10_000


async def test_values_the_database_cannot_hold_are_refused_with_422(env):
    """NUL characters, lone surrogates and integers past bigint are the caller's errors."""
    async with running_wallet(env.settings) as (_, wallet):
        _, w = await wallet.open(balance=1_000)
        bad_bodies = [
            ("/organisations", {"name": "a\u0000b"}),
            ("/organisations", {"name": "\ud800"}),
            ("/organisations", {"name": "big", "billing_mode": "INVOICE",
                                "credit_limit_minor": 2**63}),
            ("/organisations", {"name": "big", "low_balance_threshold_minor": 2**63}),
            (f"/wallets/{w}/refunds", {"refund_id": str(uuid4()), "charge_entry_id": 2**63,
                                       "amount_minor": 1}),
            (f"/wallets/{w}/refunds", {"refund_id": str(uuid4()), "charge_entry_id": 1,
                                       "amount_minor": 1, "reason": "a\u0000"}),
        ]
        for path, body in bad_bodies:
            response = await wallet.http.post(path, content=json.dumps(body).encode(),
                                              headers={"content-type": "application/json"})
            assert response.status_code == 422, (path, body, response.text)
        response = await wallet.http.put(f"/wallets/{w}/auto-topup", json={
            "enabled": True, "threshold_minor": 2**63, "amount_minor": 1, "card_token": "t"})
        assert response.status_code == 422
        payment = json.dumps({"payment_id": "p\u0000", "wallet_id": str(w),
                              "amount_minor": 100, "status": "succeeded"}).encode()
        signed = webhook_headers(env.settings.payment_webhook_secret, payment)
        response = await wallet.http.post("/webhooks/payments", content=payment, headers=signed)
        assert response.status_code == 422
        assert (await wallet.status(w))["balance_minor"] == 1_000
        await wallet.assert_consistent(w)


async def test_an_organisation_opened_twice_at_once_is_one_organisation(env):
    async with running_wallet(env.settings) as (_, wallet):
        org = str(uuid4())
        responses = await asyncio.gather(*(wallet.http.post(
            "/organisations", json={"organisation_id": org, "name": "twice"})
            for _ in range(6)))
        assert sorted(r.status_code for r in responses) == [201] + [409] * 5
