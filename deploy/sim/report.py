"""The report folder: what the services reported, per sector and month and per company, as
Markdown, one JSON document (for the wallet dashboard) and PNG plots."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from deploy.sim.compare import STATEMENT_FIELDS, Difference, Reported
from deploy.sim.driver import Observed
from deploy.sim.oracle import Expected
from deploy.sim.scenario import PROFILES, Scenario, month_of, ticker_of


def rand(minor: int, currency: str = "ZAR") -> str:
    """`R1,234.50` for ZAR, `US$12.00` for USD, else the code: never a sum of two currencies."""
    sign = "-" if minor < 0 else ""
    symbol = {"ZAR": "R", "USD": "US$"}.get(currency, f"{currency} ")
    return f"{sign}{symbol}{abs(minor) // 100:,}.{abs(minor) % 100:02d}"


def by_currency(amounts: dict[str, int]) -> str:
    """Amounts in several currencies, each on its own: `R1,200.00 · US$36.00`."""
    shown = [rand(v, c) for c, v in sorted(amounts.items(), key=lambda i: i[0] != "ZAR") if v]
    return " · ".join(shown) or "0"


def sector_months(scenario: Scenario, seen: Observed, reported: Reported) -> list[dict[str, Any]]:
    """Per profile and month: VMs, VM-hours, revenue, refused requests, top-ups and wallets
    that ran dry, from what the services reported."""
    profile = {c.ticker: c.profile for c in scenario.companies}
    currency = {c.ticker: c.currency for c in scenario.companies}
    currencies = sorted({c.currency for c in scenario.companies}, key=lambda c: c != "ZAR")
    rows: dict[tuple[str, date], dict[str, Any]] = {}
    for p in PROFILES:
        for month in scenario.months():
            # Money per currency: a ZAR and a USD amount are never added together.
            # `revenue_minor`/`top_ups_minor` are the ZAR wallets' (as before currencies).
            rows[(p, month)] = {"sector": p, "month": month.strftime("%Y-%m"), "vms": 0,
                                "vm_hours": 0.0, "revenue_minor": 0,
                                "revenue_minor_by_currency": dict.fromkeys(currencies, 0),
                                "refused_requests": 0, "top_ups_minor": 0,
                                "top_ups_minor_by_currency": dict.fromkeys(currencies, 0),
                                "depleted_wallets": 0}
    for (ticker, month), statement in reported.statements.items():
        row = rows[(profile[ticker], month)]
        vms = statement.get("vms", [])
        row["vms"] += sum(1 for v in vms if v["seconds_metered"])
        row["vm_hours"] += sum(v["seconds_metered"] for v in vms) / 3600
        row["revenue_minor_by_currency"][currency[ticker]] += (
            statement.get("charges") or {}).get("amount_minor", 0)
        row["top_ups_minor_by_currency"][currency[ticker]] += (
            statement.get("top_ups") or {}).get("amount_minor", 0)
    for (at, key), outcome in seen.requests.items():
        if outcome == "rejected" and (profile[ticker_of(key)], month_of(at)) in rows:
            rows[(profile[ticker_of(key)], month_of(at))]["refused_requests"] += 1
    for ticker, month in {(t, month_of(at)) for t, at in seen.suspensions}:
        if (profile[ticker], month) in rows:
            rows[(profile[ticker], month)]["depleted_wallets"] += 1
    for row in rows.values():
        row["vm_hours"] = round(row["vm_hours"], 1)
        row["revenue_minor"] = row["revenue_minor_by_currency"].get("ZAR", 0)
        row["top_ups_minor"] = row["top_ups_minor_by_currency"].get("ZAR", 0)
    return list(rows.values())


def company_statements(scenario: Scenario, reported: Reported) -> list[dict[str, Any]]:
    out = []
    for c in scenario.companies:
        statements = []
        for month in scenario.months():
            s = reported.statements.get((c.ticker, month), {})
            statements.append({"month": month.strftime("%Y-%m"), **{
                ours: (s.get(theirs) or {}).get("amount_minor") for ours, theirs in
                STATEMENT_FIELDS.items()}, "invoice_total_minor":
                reported.invoices.get((c.ticker, month))})
        out.append({"ticker": c.ticker, "name": c.name, "industry": c.industry,
                    "sector": c.sector, "profile": c.profile, "billing_mode": c.billing_mode,
                    "kind": c.kind, "reseller": c.reseller, "currency": c.currency,
                    "balance_minor": reported.balances.get(c.ticker),
                    "statements": statements})
    return out


def write_report(folder: Path, scenario: Scenario, expected: Expected, seen: Observed,
                 reported: Reported, differences: list[Difference]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sectors = sector_months(scenario, seen, reported)
    companies = company_statements(scenario, reported)
    document = {
        "scenario": {"seed": scenario.seed, "start": scenario.start.isoformat(),
                     "end": scenario.end.isoformat(), "companies": len(scenario.companies),
                     "months": [m.strftime("%Y-%m") for m in scenario.months()]},
        "oracle": "exact" if not differences else "differs",
        "differences": [str(d) for d in differences],
        "usage_events": expected.usage_events,
        "sectors": sectors, "companies": companies,
        "commodity_price": {d.isoformat(): p for d, p in scenario.commodity.items()},
        "daily_balances": {t: [[at.isoformat(), b] for at, b in v]
                           for t, v in seen.daily_balance.items()},
    }
    (folder / "report.json").write_text(json.dumps(document, indent=1))
    _markdown(folder, scenario, sectors, companies, differences)
    _plot_balances(folder, scenario, seen)
    _plot_revenue(folder, scenario, sectors)
    _plot_mining(folder, scenario, seen)


def _markdown(folder: Path, scenario: Scenario, sectors: list[dict[str, Any]],
              companies: list[dict[str, Any]], differences: list[Difference]) -> None:
    lines = [f"# Simulation {scenario.start:%Y-%m-%d} to {scenario.end:%Y-%m-%d}", "",
             f"{len(scenario.companies)} JSE-listed companies, seed {scenario.seed}. Oracle: "
             + ("**exact**" if not differences else f"**{len(differences)} differences**"), "",
             "Plots: `balances.png`, `revenue_by_sector.png`, `mining_fleet.png`.", "",
             "## Per sector and month", "",
             "Money is shown per currency (ZAR, and USD for the companies with a USD wallet), "
             "never summed across currencies. VMs: the VMs with usage that month (the mining "
             "plot counts VMs per day: existing, and of organisations not suspended).", "",
             "| sector | month | VMs | VM-hours | revenue | refused requests | top-ups "
             "| wallets run dry |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in sectors:
        lines.append(f"| {r['sector']} | {r['month']} | {r['vms']} | {r['vm_hours']:,.1f} | "
                     f"{by_currency(r['revenue_minor_by_currency'])} | "
                     f"{r['refused_requests']} | {by_currency(r['top_ups_minor_by_currency'])} | "
                     f"{r['depleted_wallets']} |")
    lines += ["", "## Statements per company", ""]
    for c in companies:
        lines += [f"### {c['name']} ({c['ticker']}, {c['sector']}, {c['billing_mode']}, "
                  f"{c['currency']})", "",
                  "| month | opening | charges | credits | refunds | closing | invoice |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for s in c["statements"]:
            cells = [rand(s[k], c["currency"]) if isinstance(s[k], int) else "?"
                     for k in ("opening", "charges", "credits", "refunds", "closing")]
            invoice = (rand(s["invoice_total_minor"], c["currency"])
                       if s["invoice_total_minor"] else "")
            lines.append(f"| {s['month']} | " + " | ".join(cells) + f" | {invoice} |")
        lines.append("")
    if differences:
        lines += ["## Differences from the oracle", ""] + [f"- {d}" for d in differences]
    (folder / "report.md").write_text("\n".join(lines) + "\n")


def _plot_balances(folder: Path, scenario: Scenario, seen: Observed) -> None:
    """One ZAR company of each of a few profiles (the first of each): one axis, one
    currency."""
    fig, ax = plt.subplots(figsize=(10, 5))
    shown: set[str] = set()
    for c in scenario.companies:
        if (c.profile in shown or c.ticker not in seen.daily_balance or len(shown) >= 6
                or c.currency != "ZAR"):
            continue
        shown.add(c.profile)
        points = seen.daily_balance[c.ticker]
        ax.plot([at for at, _ in points], [b / 100 for _, b in points],  # type: ignore[arg-type]
                label=f"{c.name} ({c.profile}, {c.billing_mode})")
    ax.set_title("Wallet balance over time (ZAR wallets)")
    ax.set_ylabel("balance (R)")
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(folder / "balances.png", dpi=100)
    plt.close(fig)


def _plot_revenue(folder: Path, scenario: Scenario, sectors: list[dict[str, Any]]) -> None:
    """Stacked by sector, one panel per currency: ZAR and USD revenue are never added."""
    months = [m.strftime("%Y-%m") for m in scenario.months()]
    currencies = sorted({c.currency for c in scenario.companies}, key=lambda c: c != "ZAR")
    fig, axes = plt.subplots(len(currencies), 1, figsize=(10, 4 + 2.5 * len(currencies)),
                             squeeze=False)
    for ax, currency in zip(axes[:, 0], currencies, strict=True):
        bottom = [0.0] * len(months)
        for profile in PROFILES:
            values = [next((r["revenue_minor_by_currency"].get(currency, 0) / 100
                            for r in sectors if r["sector"] == profile and r["month"] == m),
                           0.0)
                      for m in months]
            if any(values):  # a sector keeps its colour in every panel
                ax.bar(months, values, bottom=bottom, label=profile,
                       color=plt.get_cmap("tab10")(PROFILES.index(profile)))
                bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_title(f"Monthly revenue by sector, {currency} wallets (usage charged)")
        ax.set_ylabel({"ZAR": "R", "USD": "US$"}.get(currency, currency))
        if any(bottom):
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(folder / "revenue_by_sector.png", dpi=100)
    plt.close(fig)


def _plot_mining(folder: Path, scenario: Scenario, seen: Observed) -> None:
    """The mining fleet per day: the VMs that exist (suspended ones included), and those of
    organisations not suspended for funds (which run in their rhythm and are billed), against
    the commodity price. The report's table counts VMs with usage in a month, a third view."""
    mining = {c.ticker for c in scenario.companies if c.profile == "mining"}
    fleet: dict[datetime, int] = defaultdict(int)
    active: dict[datetime, int] = defaultdict(int)
    for (ticker, at), count in seen.fleet.items():
        if ticker in mining:
            fleet[at] += count
            active[at] += seen.fleet_not_suspended.get((ticker, at), count)
    days = sorted(fleet)
    fig, ax = plt.subplots(figsize=(10, 5))
    ax.plot(days, [fleet[d] for d in days],  # type: ignore[arg-type]
            color="tab:brown", label="VMs existing (incl. suspended)")
    ax.plot(days, [active[d] for d in days],  # type: ignore[arg-type]
            color="tab:orange", linestyle="--",
            label="VMs of organisations not suspended (running in their rhythm)")
    ax.set_ylabel("VMs of mining companies, at the start of each day")
    ax.set_ylim(bottom=0)
    price_ax = ax.twinx()
    price_ax.plot(days, [scenario.commodity[d.date()] for d in days],  # type: ignore[arg-type]
                  color="tab:blue",
                  label="commodity price")
    price_ax.set_ylabel("commodity price (relative to the start)")
    ax.set_title("Mining fleet against the commodity price")
    fig.legend(loc="upper left", fontsize=8, bbox_to_anchor=(0.07, 0.9))
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(folder / "mining_fleet.png", dpi=100)
    plt.close(fig)
