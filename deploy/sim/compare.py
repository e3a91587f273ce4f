"""What the services report over their HTTP APIs, compared with the oracle to the cent.

Money is compared by totals (balances; statements' opening, charges, credits, refunds and
closing; per VM billed hours and amounts; invoice totals), never by counting ledger rows.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from deploy.sim.driver import Observed
from deploy.sim.oracle import Expected
from deploy.sim.scenario import Scenario, ticker_of
from deploy.sim.system import Portal, check_stop

STATEMENT_FIELDS = {"opening": "opening_balance", "charges": "charges", "credits": "credits",
                    "refunds": "refunds", "closing": "closing_balance"}


@dataclass
class Reported:
    balances: dict[str, int] = field(default_factory=dict)
    statements: dict[tuple[str, date], dict[str, Any]] = field(default_factory=dict)
    invoices: dict[tuple[str, date], int] = field(default_factory=dict)
    runtime_over: dict[date, list[dict[str, Any]]] = field(default_factory=dict)
    ledger_consistent: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Difference:
    company: str  # "<ticker> <name>"
    month: str  # YYYY-MM, or "" for the whole run
    what: str
    expected: object
    reported: object

    def __str__(self) -> str:
        where = f"{self.company} {self.month}".strip()
        return f"{where}: {self.what}: expected {self.expected}, reported {self.reported}"


async def collect(scenario: Scenario, seen: Observed, portal: Portal,
                  timeout: float = 120) -> Reported:
    """Everything the comparison needs, over HTTP. Statements are waited for (a month closes
    once the wallet confirmed its last debits)."""
    reported = Reported()
    months = scenario.months()

    async def wallet(ticker: str) -> None:
        wallet_id = seen.wallets[ticker]
        status = await portal.call("GET", "wallet", f"/wallets/{wallet_id}")
        reported.balances[ticker] = status.json()["balance_minor"]
        recon = await portal.call("GET", "wallet", f"/wallets/{wallet_id}/reconciliation")
        reported.ledger_consistent[ticker] = bool(recon.json()["consistent"])
        for month in months:
            label = month.strftime("%Y-%m")
            reported.statements[(ticker, month)] = await _statement(portal, wallet_id, label,
                                                                    timeout)
            invoice = await portal.call("GET", "billing", f"/wallets/{wallet_id}/invoices/{label}")
            if invoice.status_code == 200:
                reported.invoices[(ticker, month)] = invoice.json()["total_minor"]

    await asyncio.gather(*(wallet(t) for t in seen.wallets))
    for month in months:
        runtime = await portal.call("GET", "metering", "/runtime",
                                    params={"month": month.strftime("%Y-%m")})
        reported.runtime_over[month] = runtime.json()["over_metered"]
    return reported


async def _statement(portal: Portal, wallet_id: object, label: str,
                     timeout: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        check_stop()  # Ctrl-C while waiting for a month to close
        response = await portal.call("GET", "billing", f"/wallets/{wallet_id}/statements/{label}")
        if response.status_code == 200:
            statement: dict[str, Any] = response.json()
            return statement
        if loop.time() > deadline:
            return {"missing": response.text}
        await asyncio.sleep(0.2)


def compare(scenario: Scenario, expected: Expected, seen: Observed,
            reported: Reported) -> list[Difference]:
    names = {c.ticker: f"{c.ticker} {c.name}" for c in scenario.companies}
    vm_keys = {str(vm_id): key for key, vm_id in seen.vms.items()}
    out: list[Difference] = []

    def differ(ticker: str, month: date | None, what: str, want: object, got: object) -> None:
        if want != got:
            out.append(Difference(names.get(ticker, ticker),
                                  month.strftime("%Y-%m") if month else "", what, want, got))

    for ticker, balance in expected.balances.items():
        differ(ticker, None, "balance", balance, reported.balances.get(ticker))
        differ(ticker, None, "ledger == balance", True, reported.ledger_consistent.get(ticker))
    for (ticker, month), want in expected.statements.items():
        statement = reported.statements.get((ticker, month), {})
        if "missing" in statement or not statement:
            differ(ticker, month, "statement", "closed", statement.get("missing", "missing"))
            continue
        for ours, theirs in STATEMENT_FIELDS.items():
            differ(ticker, month, ours, want[ours], (statement.get(theirs) or {}).get(
                "amount_minor"))
        if statement.get("mismatches"):
            differ(ticker, month, "mismatches", [], statement["mismatches"])
        vms = {vm_keys.get(v["vm_id"], v["vm_id"]): v for v in statement.get("vms", [])}
        mine: dict[str, dict[str, int]] = {k: v for (k, m), v in expected.vm_months.items()
                if m == month and ticker_of(k) == ticker}
        for vm_key in sorted(set(vms) | set(mine)):
            want_vm = mine.get(vm_key, {"seconds_metered": 0, "seconds_billed": 0, "amount": 0})
            got = vms.get(vm_key, {})
            got_vm = {"seconds_metered": got.get("seconds_metered", 0),
                      "seconds_billed": got.get("seconds_billed", 0),
                      "amount": (got.get("amount") or {}).get("amount_minor", 0)}
            differ(ticker, month, f"VM {vm_key}", want_vm, got_vm)
    for invoice in sorted(set(expected.invoices) | set(reported.invoices)):
        differ(invoice[0], invoice[1], "invoice total", expected.invoices.get(invoice),
               reported.invoices.get(invoice))
    for at, vm in sorted(set(expected.requests) | set(seen.requests)):
        differ(ticker_of(vm), at.date().replace(day=1), f"request {vm} on {at:%Y-%m-%d}",
               expected.requests.get((at, vm)), seen.requests.get((at, vm)))
    for at, vm in sorted(set(expected.refunds) | set(seen.refunds)):
        differ(ticker_of(vm), at.date().replace(day=1), f"refund of {vm} on {at:%Y-%m-%d}",
               expected.refunds.get((at, vm)), seen.refunds.get((at, vm)))
    for ticker, charge, amount in seen.refund_amounts:
        if amount > charge * 95 // 100:
            differ(ticker, None, "refund within 95% of its charge", charge * 95 // 100, amount)
    differ("", None, "suspensions", sorted(expected.suspensions), sorted(seen.suspensions))
    for month, over in reported.runtime_over.items():
        if over:
            differ("", month, "VMs metered above their runtime", [], over)
    return out
