import asyncio
import csv
import io
from uuid import uuid4

from services.billing.api import INVOICE_CSV_COLUMNS, invoice_csv, major, statement_csv
from services.billing.gateway import (
    Declined,
    SimulatedGateway,
    Succeeded,
    TimedOut,
    charge_within,
)
from shared.money import Money


async def test_the_simulated_gateway_is_deterministic_by_card_token():
    gateway = SimulatedGateway()
    attempt = uuid4()
    assert await gateway.charge(attempt, "tok_visa", Money(100)) == Succeeded(f"sim-{attempt}")
    assert isinstance(await gateway.charge(uuid4(), "tok_decline_x", Money(100)), Declined)
    assert isinstance(await gateway.charge(uuid4(), "tok_timeout_x", Money(100)), TimedOut)
    assert [c[1] for c in gateway.calls] == ["tok_visa", "tok_decline_x", "tok_timeout_x"]


async def test_the_simulated_gateway_answers_a_repeated_attempt_with_its_first_outcome():
    gateway = SimulatedGateway()
    attempt = uuid4()
    first = await gateway.charge(attempt, "tok_visa", Money(100))
    assert await gateway.charge(attempt, "tok_decline_now", Money(100)) == first
    assert gateway.outcomes == {attempt: first}


async def test_a_slow_gateway_call_becomes_timed_out():
    class Slow:
        async def charge(self, attempt_id, card_token, amount):
            await asyncio.sleep(5)
            return Succeeded("late")

    outcome = await charge_within(Slow(), uuid4(), "tok", Money(1), timeout_s=0.05)
    assert outcome == TimedOut(0.05)


def test_major_units_are_plain_decimals():
    assert [major(m, "ZAR") for m in (0, 5, 15_000, -1_234, 100_001)] == [
        "0.00", "0.05", "150.00", "-12.34", "1000.01"]


INVOICE = {
    "document_number": "INV202601-000007", "customer_account": "CW123456789ABCD",
    "document_date": "2026-01-31", "due_date": "2026-03-02", "currency": "ZAR",
    "vat_rate_percent": 15,
    "lines": [
        {"line_number": 1, "item_code": "VM-MEDIUM", "description": "VM a, 744.00 h metered",
         "quantity": 1, "unit_price_minor": 30_000, "net_minor": 30_000, "vat_minor": 4_500,
         "total_minor": 34_500},
        {"line_number": 2, "item_code": "VM-CUSTOM", "description": "VM b, with, commas",
         "quantity": 1, "unit_price_minor": 12_345, "net_minor": 12_345, "vat_minor": 1_852,
         "total_minor": 14_197},
    ],
    "net_minor": 42_345, "vat_minor": 6_352, "total_minor": 48_697,
}


def test_invoice_csv_has_one_row_per_line_with_the_header_repeated():
    text = invoice_csv(INVOICE)
    assert text.splitlines()[0] == ",".join(INVOICE_CSV_COLUMNS)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2
    assert rows[1] == {
        "customer_account": "CW123456789ABCD", "document_type": "INV",
        "document_number": "INV202601-000007", "document_date": "2026-01-31",
        "due_date": "2026-03-02", "currency": "ZAR", "line_number": "2",
        "item_code": "VM-CUSTOM", "description": "VM b, with, commas", "quantity": "1.00",
        "unit_price": "123.45", "net_amount": "123.45", "vat_code": "S", "vat_rate": "15.00",
        "vat_amount": "18.52", "line_total": "141.97"}
    assert text.endswith("\r\n")


def test_statement_csv_lists_balances_vms_and_mismatches():
    money = {"amount_minor": 100, "currency": "ZAR"}
    statement = {"currency": "ZAR", "opening_balance": money, "charges": money, "credits": money,
                 "top_ups": None, "refunds": money, "closing_balance": money,
                 "vms": [{"vm_id": "v", "seconds_metered": 3600, "seconds_billed": 3600,
                          "amount": money, "rated": money, "cap": money, "debited": money}],
                 "mismatches": ["something off"], "notes": []}
    rows = list(csv.DictReader(io.StringIO(statement_csv(statement))))
    assert [r["record"] for r in rows] == [
        "opening_balance", "charges", "credits", "top_ups", "refunds", "closing_balance", "vm",
        "mismatch"]
    assert rows[3]["amount_minor"] == "0"
    assert rows[-1]["detail"] == "something off"
