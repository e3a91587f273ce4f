"""A month of hourly usage for a few VMs, through billing and the real wallet, reconciled to
the cent against an independent calculation; the monthly cap; statements and invoices."""

from __future__ import annotations

import asyncio
import csv
import io
import random
from datetime import timedelta
from uuid import uuid4

from services.billing import repository as repo
from shared.contracts.vm import VmSpec
from shared.topics import BILLING_EVENTS, METERING_USAGE
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
from tests.kafka_helpers import KafkaProbe

SMALL, MEDIUM, LARGE = (VmSpec.of_tier(t) for t in ("small", "medium", "large"))
CUSTOM = VmSpec(vcpu=3, ram_gb=5, disk_gb=120)
HOURS = 744  # January
MAR = FEB + timedelta(days=28)


def month_pattern(seed: int, kind: str) -> list[list[tuple[VmSpec, int]]]:
    """Each hour's segments: always on, or a VM that runs part-time and resizes."""
    rnd = random.Random(seed)
    hours = []
    for _ in range(HOURS):
        if kind == "full":
            hours.append([(MEDIUM, 3600)])
        elif kind == "small":
            hours.append([(SMALL, 3600)])
        else:
            on = rnd.choice([0, 3600, 3600, rnd.randint(1, 3599)])
            split = rnd.randint(0, on)
            hours.append([(CUSTOM, split), (LARGE, on - split)] if kind == "mixed"
                         else [(CUSTOM, on)])
    return hours


async def test_a_month_reconciles_to_the_cent(env):
    settings = env.settings
    async with running_wallet(settings) as (_, wallet), running_billing(settings) as (_, http), \
            KafkaProbe(settings.kafka_bootstrap_servers) as kafka:
        payg_org, payg = await wallet.open(balance=5_000_000)
        invoice_org, invoiced = await wallet.open(billing_mode="INVOICE", credit_limit=10_000_000)
        vms = {  # vm -> (wallet, org, hours)
            uuid4(): (payg, payg_org, month_pattern(1, "full")),  # reaches the cap
            uuid4(): (payg, payg_org, month_pattern(2, "mixed")),
            uuid4(): (invoiced, invoice_org, month_pattern(3, "small")),  # under the cap
            uuid4(): (invoiced, invoice_org, month_pattern(4, "custom")),
        }
        messages = [(w, usage(vm, w, org, JAN + timedelta(hours=h), segments))
                    for vm, (w, org, hours) in vms.items() for h, segments in enumerate(hours)]
        await kafka.publish_many(settings.topic(METERING_USAGE.name), messages)
        await publish_watermarks(kafka, settings, FEB)

        closed = await month_closed(kafka, settings, [payg, invoiced], "2026-01")

        expected = {vm: expected_vm_month(hours) for vm, (_, _, hours) in vms.items()}
        for wallet_id, statement in closed.items():
            mine = {vm: e for vm, e in expected.items() if vms[vm][0] == wallet_id}
            by_vm = {vm["vm_id"]: vm for vm in statement["vms"]}
            assert set(by_vm) == {str(vm) for vm in mine}
            for vm, (charge, seconds) in mine.items():
                assert by_vm[str(vm)]["amount"]["amount_minor"] == charge
                assert by_vm[str(vm)]["debited"]["amount_minor"] == charge
                assert by_vm[str(vm)]["seconds_metered"] == seconds
            total = sum(charge for charge, _ in mine.values())
            assert statement["charges"]["amount_minor"] == total
            assert statement["mismatches"] == []
            opening = statement["opening_balance"]["amount_minor"]
            assert statement["closing_balance"]["amount_minor"] == (
                opening - total + statement["credits"]["amount_minor"])
            # the wallet's own books agree with the statement, and with its ledger
            status = await wallet.status(wallet_id)
            assert status["balance_minor"] == statement["closing_balance"]["amount_minor"]
            await wallet.assert_consistent(wallet_id)

        payg_statement = closed[payg]
        assert payg_statement["top_ups"]["amount_minor"] == 5_000_000
        assert payg_statement["closing_balance"]["amount_minor"] == 5_000_000 - sum(
            e[0] for vm, e in expected.items() if vms[vm][0] == payg)

        # the cap: the always-on medium VM pays its monthly price, not 744 hours of it
        capped_vm = next(vm for vm, (_, _, h) in vms.items() if h[0] == [(MEDIUM, 3600)])
        capped = next(v for v in payg_statement["vms"] if v["vm_id"] == str(capped_vm))
        assert capped["amount"]["amount_minor"] == 30_000
        assert capped["rated"]["amount_minor"] == 744 * 41 > 30_000
        assert capped["seconds_billed"] < capped["seconds_metered"] == 744 * 3600

        # statements over HTTP, JSON and CSV
        response = await http.get(f"/wallets/{payg}/statements/2026-01")
        assert response.status_code == 200
        assert response.json()["closing_balance"] == payg_statement["closing_balance"]
        rows = list(csv.DictReader(io.StringIO(
            (await http.get(f"/wallets/{payg}/statements/2026-01?format=csv")).text)))
        closing = next(r for r in rows if r["record"] == "closing_balance")
        assert int(closing["amount_minor"]) == payg_statement["closing_balance"]["amount_minor"]
        assert sum(1 for r in rows if r["record"] == "vm") == 2
        missing = await http.get(f"/wallets/{payg}/statements/2026-02")
        assert missing.status_code == 404 and "not closed" in missing.json()["detail"]
        assert (await http.get(f"/wallets/{uuid4()}/statements/2026-01")).status_code == 404
        assert (await http.get(f"/wallets/{payg}/statements/2026-1")).status_code == 422

        # the invoice customer's invoice: VAT at 15% per line, CSV for the accounting import
        assert (await http.get(f"/wallets/{payg}/invoices/2026-01")).status_code == 404
        invoice = (await http.get(f"/wallets/{invoiced}/invoices/2026-01")).json()
        invoice_total = sum(e[0] for vm, e in expected.items() if vms[vm][0] == invoiced)
        assert invoice["net_minor"] == invoice_total
        assert invoice["vat_minor"] == sum((line["net_minor"] * 15 * 2 + 100) // 200
                                           for line in invoice["lines"])
        assert invoice["total_minor"] == invoice["net_minor"] + invoice["vat_minor"]
        assert invoice["document_date"] == "2026-01-31"
        exported = (await http.get(f"/wallets/{invoiced}/invoices/2026-01?format=csv")).text
        lines = list(csv.DictReader(io.StringIO(exported)))
        assert len(lines) == 2
        assert {line["document_number"] for line in lines} == {invoice["document_number"]}
        assert round(sum(float(line["line_total"]) for line in lines) * 100) == \
            invoice["total_minor"]
        assert all(line["vat_rate"] == "15.00" for line in lines)


async def test_months_closed_together_each_get_their_own_invoice(env, db):
    """A close that catches up takes several months of one wallet at once (here January and
    February, when the first watermarks already pass March): each month keeps its own invoice
    and its own `InvoiceIssued`, and a top-up made while no month was open goes on the
    earliest."""
    settings = env.settings
    async with running_wallet(settings) as (_, wallet), running_billing(settings) as (_, http), \
            KafkaProbe(settings.kafka_bootstrap_servers) as kafka:
        org, invoiced = await wallet.open(billing_mode="INVOICE", credit_limit=10_000_000,
                                          balance=7_000)
        vm = uuid4()
        hours = {JAN: 3, FEB: 5}  # always-on medium hours in each month
        await kafka.publish_many(settings.topic(METERING_USAGE.name), [
            (invoiced, usage(vm, invoiced, org, start + timedelta(hours=h), [(MEDIUM, 3600)]))
            for start, count in hours.items() for h in range(count)])
        # every entry (one per hour, one VM) confirmed first, so both months are ready when
        # the watermarks come
        for _ in range(200):
            if await db.fetchval(
                    "SELECT count(*) FROM billing.usage_entries WHERE confirmed") == 8:
                break
            await asyncio.sleep(0.1)
        await publish_watermarks(kafka, settings, MAR)

        issued = await kafka.read_count(
            settings.topic(BILLING_EVENTS.name), 2, timeout=60,
            where=lambda m: m["type"] == "billing.invoice_issued"
            and m["wallet_id"] == str(invoiced))
        assert sorted(m["month"] for m in issued) == ["2026-01", "2026-02"]
        assert len({m["document_number"] for m in issued}) == 2
        for month, count in (("2026-01", 3), ("2026-02", 5)):
            invoice = (await http.get(f"/wallets/{invoiced}/invoices/{month}")).json()
            assert invoice["net_minor"] == count * 41
            event = next(m for m in issued if m["month"] == month)
            assert event["document_number"] == invoice["document_number"]
            assert event["total_incl_vat"]["amount_minor"] == invoice["total_minor"]
        january = (await month_closed(kafka, settings, [invoiced], "2026-01"))[invoiced]
        february = (await month_closed(kafka, settings, [invoiced], "2026-02"))[invoiced]
        assert january["top_ups"]["amount_minor"] == 7_000
        assert february["top_ups"]["amount_minor"] == 0
        assert february["opening_balance"] == january["closing_balance"]
        assert february["closing_balance"]["amount_minor"] == 7_000 - 8 * 41


async def test_unbooked_movements_and_issues_go_on_the_earliest_month_closing(db):
    wallet_id = uuid4()
    await db.execute("""INSERT INTO billing.movements (wallet_id, movement_key, kind, amount,
                            usage_partition) VALUES ($1, 'top_up:x', 'top_up', 5, 0)""",
                     wallet_id)
    await db.execute("""INSERT INTO billing.issues (issue_key, wallet_id, detail)
                        VALUES ($1, $2, 'x')""", f"test:{wallet_id}", wallet_id)
    february, january = FEB.date(), JAN.date()
    await repo.assign_unbooked_movements(db, [(wallet_id, february), (wallet_id, january)])
    assert await db.fetchval("SELECT booked_month FROM billing.movements WHERE wallet_id = $1",
                             wallet_id) == january
    assert await db.fetchval("SELECT month FROM billing.issues WHERE wallet_id = $1",
                             wallet_id) == january
