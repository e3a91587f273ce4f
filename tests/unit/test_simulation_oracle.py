"""The simulation's scenario generator and its independent oracle (pure: no services)."""

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path

from deploy.sim import oracle as oracle_module
from deploy.sim.oracle import Oracle
from deploy.sim.prices import hold_for, rate, vat
from deploy.sim.scenario import (
    PROFILE_OF_SECTOR,
    PROFILES,
    Action,
    Company,
    Scenario,
    Size,
    black_friday,
    generate,
    load_companies,
    rate_card_change,
    usd_rate_card,
)
from deploy.simulation import SIZES

JULY = datetime(2026, 7, 1, tzinfo=UTC)
MEDIUM, LARGE = Size.of_tier("medium"), Size.of_tier("large")


def company(**changes) -> Company:
    fields = dict(ticker="SBK", name="Standard Bank Group", industry="Financials",
                  sector="Banks", profile="banking", billing_mode="PAYG", credit_limit=0,
                  opening_top_up=100_000, base_fleet=1, growth=0.0)
    return Company(**{**fields, **changes})


def scenario(c: Company, actions: list[Action], days: int = 31) -> Scenario:
    s = Scenario(seed=1, start=JULY, days=days, companies=[c])
    for action in actions:
        s.actions.setdefault(action.at, []).append(action)
    s.commodity = {(JULY + timedelta(days=d)).date(): 1.0 for d in range(days + 1)}
    return s


def test_the_oracle_imports_no_service_code():
    """The oracle, its state, its prices and the scenario: standard library only."""
    folder = Path(oracle_module.__file__).parent
    for name in ("oracle.py", "oracle_state.py", "prices.py", "scenario.py"):
        tree = ast.parse((folder / name).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                     for a in n.names}
        assert all(m == "__future__" or m.split(".")[0] == "deploy" or m in STDLIB
                   for m in imported if m), (name, imported)


STDLIB = {"csv", "math", "random", "collections", "collections.abc", "dataclasses",
          "datetime", "pathlib", "fractions", "functools"}


def test_rating_rounds_each_hour_down_once_and_caps_at_the_monthly_price():
    assert rate(((MEDIUM, 3600),)) == (41, 30_000)  # R300 / 730 = 41.09... cents
    custom = Size(None, 3, 5, 120)  # (3*12 + 5*4 + 120/50) cents an hour = 58.4
    assert rate(((custom, 3600),)) == (58, 42_632)  # cap: 58.4 * 730 = 42,632
    assert rate(((MEDIUM, 900), (LARGE, 2700))) == (71, 60_000)  # 10.27 + 61.64 = 71.9
    assert hold_for(custom) == 42_632
    assert vat(100) == 15 and vat(3) == 0 and vat(10) == 2  # half away from zero


def test_a_vm_running_all_month_pays_its_monthly_price_and_draws_its_hold_down():
    c = company()
    s = scenario(c, [Action(JULY, "SBK", "request", "sbk-1", MEDIUM)])
    expected = Oracle(s).run()
    july = s.months()[0]
    assert expected.requests[(JULY, "sbk-1")] == "succeeded"
    # 3565 s in the first hour (created at +30 s, on at +35 s), then 743 full hours: capped
    assert expected.vm_months[("sbk-1", july)]["amount"] == 30_000
    assert expected.vm_months[("sbk-1", july)]["seconds_metered"] == 3565 + 743 * 3600
    assert expected.statements[("SBK", july)] == {
        "opening": 0, "charges": 30_000, "credits": 100_000, "refunds": 0, "closing": 70_000}
    assert expected.balances["SBK"] == 70_000


def test_a_price_change_rates_each_hour_and_prices_each_request_at_its_card():
    c = company(opening_top_up=500_000)
    aug = datetime(2026, 8, 1, tzinfo=UTC)
    s = scenario(c, [Action(JULY, "SBK", "request", "sbk-1", MEDIUM),
                     Action(aug + timedelta(days=1), "SBK", "request", "sbk-2", MEDIUM)],
                 days=62)
    s.rate_cards = rate_card_change(JULY, 62)
    assert s.rate_cards[0]["effective_from"] == aug.isoformat()
    expected = Oracle(s).run()
    july, august = s.months()
    assert expected.vm_months[("sbk-1", july)]["amount"] == 30_000
    # R330 a month from August: 45.2 cents an hour, and the cap is the new price
    assert expected.vm_months[("sbk-1", august)]["amount"] == 33_000
    assert rate(((MEDIUM, 3600),), Oracle(s).card(aug)) == (45, 33_000)
    assert hold_for(MEDIUM, Oracle(s).card(aug)) == 33_000


def test_a_request_without_the_funds_is_refused_and_nothing_runs():
    c = company(opening_top_up=20_000)
    s = scenario(c, [Action(JULY, "SBK", "request", "sbk-1", MEDIUM)])
    expected = Oracle(s).run()
    assert expected.requests[(JULY, "sbk-1")] == "rejected"
    assert expected.usage_events == 0 and expected.balances["SBK"] == 20_000


def test_refunds_above_95_percent_of_the_hour_are_refused():
    c = company()
    day3 = JULY + timedelta(days=3)
    s = scenario(c, [Action(JULY, "SBK", "request", "sbk-1", LARGE),
                     Action(day3, "SBK", "refund", "sbk-1", percent=99,
                            hour=day3 - timedelta(hours=12)),
                     Action(day3 + timedelta(days=1), "SBK", "refund", "sbk-1", percent=50,
                            hour=day3 - timedelta(hours=12))])
    expected = Oracle(s).run()
    assert expected.refunds[(day3, "sbk-1")] == "refused"
    assert expected.refunds[(day3 + timedelta(days=1), "sbk-1")] == "applied"
    assert expected.statements[("SBK", s.months()[0])]["refunds"] == 82 * 50 // 100


def test_a_wallet_that_runs_dry_is_suspended_and_comes_back_after_a_late_top_up():
    # Funds for one Large VM's month: once its hold is drawn down, usage takes the wallet
    # below zero; three days later the company tops up and its VM is powered on again.
    c = company(opening_top_up=60_000, late_top_up_after_days=3, late_top_up=200_000)
    s = scenario(c, [Action(JULY, "SBK", "request", "sbk-1", LARGE)], days=62)
    expected = Oracle(s).run()
    (ticker, at), = expected.suspensions
    # July's usage draws the hold down to nothing (its cap, R600, is the hold); 1 August's
    # takes the wallet below zero, found when the clock reaches the 2nd
    assert ticker == "SBK" and at == datetime(2026, 8, 2, tzinfo=UTC)
    assert ("SBK", at + timedelta(days=3), 200_000, "late top-up") in expected.top_ups
    august = s.months()[1]
    # powered off 5 s after midnight on the 2nd, on again 5 s after midnight on the 5th
    assert expected.vm_months[("sbk-1", august)]["seconds_metered"] == (
        86_400 + 5 + 27 * 86_400 - 5)


def test_invoice_customers_go_negative_within_their_credit_and_are_invoiced_with_vat():
    c = company(billing_mode="INVOICE", credit_limit=200_000, opening_top_up=0,
                pays_invoices=True)
    s = scenario(c, [Action(JULY, "SBK", "request", "sbk-1", MEDIUM)], days=34)
    expected = Oracle(s).run()
    july = s.months()[0]
    assert expected.statements[("SBK", july)]["closing"] == -30_000
    assert expected.invoices[("SBK", july)] == 30_000 + 4_500
    # paid on the 3rd: the month's charges
    assert ("SBK", datetime(2026, 8, 3, tzinfo=UTC), 30_000, "invoice payment") \
        in expected.top_ups


def test_the_companies_file_has_over_100_real_jse_companies_with_known_sectors():
    rows = load_companies()
    assert len(rows) >= 100
    assert len({r[0] for r in rows}) == len(rows)
    unknown = {r[3] for r in rows} - set(PROFILE_OF_SECTOR)
    # sectors without a rhythm of their own behave as industrial companies (weekdays)
    assert unknown <= {"Chemicals", "Industrial Materials", "General Industrials",
                       "Consumer Services", "Food Producers", "Beverages", "Tobacco",
                       "Industrial Support Services", "Industrial Transportation",
                       "Electronic and Electrical Equipment", "Industrial Engineering",
                       "Construction and Materials"}


def test_the_same_seed_gives_the_same_scenario_and_the_same_money():
    one, two = (generate(7, JULY, 40, 20) for _ in range(2))
    assert one.companies == two.companies and one.actions == two.actions
    assert Oracle(one).run().balances == Oracle(two).run().balances
    assert generate(8, JULY, 40, 20).actions != one.actions


def test_the_demo_size_shows_every_profile_and_scenario():
    demo = SIZES["demo"]
    s = generate(14, JULY, demo.days, demo.companies)
    assert {c.profile for c in s.companies} == set(PROFILES)
    assert sum(c.kind == "reseller" for c in s.companies) >= 2
    assert any(c.reseller for c in s.companies)
    assert any(c.auto_top_up and c.auto_top_up.card_token.startswith("tok_decline")
               for c in s.companies)
    assert any(c.late_top_up_after_days for c in s.companies)
    kinds = {a.kind for actions in s.actions.values() for a in actions}
    assert kinds == {"request", "delete", "resize", "refund"}


def test_black_friday_is_the_last_friday_of_november():
    assert black_friday(2026).isoformat() == "2026-11-27"


def test_a_usd_wallet_is_priced_only_by_the_usd_card_from_its_start():
    c = company(ticker="AGL", currency="USD", opening_top_up=5_000)
    usd = usd_rate_card(JULY, 62)
    usd_from = datetime.fromisoformat(str(usd["effective_from"]))
    assert usd_from == JULY + timedelta(days=7)
    s = scenario(c, [Action(JULY, "AGL", "request", "agl-1", MEDIUM),
                     Action(usd_from, "AGL", "request", "agl-2", MEDIUM),
                     Action(usd_from, "AGL", "request", "agl-3", LARGE)], days=62)
    s.rate_cards = [*rate_card_change(JULY, 62), usd]
    expected = Oracle(s).run()
    july, august = s.months()
    # no price in USD yet: refused as invalid (the services answer 422), nothing held
    assert expected.requests[(JULY, "agl-1")] == "invalid"
    # US$18 a month held for the medium; US$32 left is short of a large's US$36
    assert expected.requests[(usd_from, "agl-2")] == "succeeded"
    assert expected.requests[(usd_from, "agl-3")] == "rejected"
    # 2 cents an hour (1,800 / 730 = 2.47, down); the ZAR card change in August is not USD's
    first = expected.vm_months[("agl-2", july)]
    assert first["amount"] == 2 * 24 * 24  # 24 days of hours, the first 3,565 s: 2.44 -> 2
    # all August at 2 cents an hour (below the US$18 cap): the ZAR change leaves USD alone
    assert expected.vm_months[("agl-2", august)]["amount"] == 2 * 744
    assert expected.statements[("AGL", july)]["credits"] == 5_000
    assert expected.balances["AGL"] == 5_000 - 2 * 24 * 24 - 2 * 744


def test_the_generated_run_has_usd_wallets_in_every_size():
    for size in SIZES.values():
        s = generate(14, JULY, size.days, min(size.companies, 12))
        usd = [c for c in s.companies if c.currency == "USD"]
        assert len(usd) >= 2
        assert {c["currency"] for c in s.rate_cards} == {"ZAR", "USD"}
        assert all(c.opening_top_up < 100_000 for c in usd if c.billing_mode == "PAYG")
