"""A customer, a phone user and an operator use the portal in Chromium: sign in, read the
wallet status and a statement, download it, ask for VMs beyond and within funds, resize and
delete one, set auto top-up, suspend and resume a wallet."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import PHONE, Portal, csv_rows, sign_in


def test_sign_in_status_popover_statement_and_csv(browser: Any, portal: Portal) -> None:
    org = portal.open_organisation(75_000)
    portal.top_up(org.wallet_id, 2_550)  # balance R775.50

    page = sign_in(browser, portal, "cw_000000000000_" + "A" * 43)
    expect(page.get_by_test_id("signin-error")).to_contain_text("not valid")
    portal.shot(page, "signin-refused")

    page = sign_in(browser, portal, org.key)
    expect(page).to_have_url(re.compile(r"/statement$"))
    page.click("[data-testid=wallet-status] summary")
    expect(page.get_by_test_id("status-balance")).to_have_text("R775.50")
    expect(page.get_by_test_id("status-held")).to_have_text("R0.00")
    expect(page.get_by_test_id("status-available")).to_have_text("R775.50")
    expect(page.get_by_test_id("status-runway")).to_have_text("no usage in the last 24 hours")
    portal.shot(page, "status-popover")
    page.click("[data-testid=wallet-status] summary")

    expect(page.get_by_test_id("opening")).to_have_text("R0.00")
    expect(page.get_by_test_id("closing")).to_have_text("R775.50")
    rows = page.locator("[data-testid=entries] tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0).locator("td").nth(1)).to_have_text("top-up")
    expect(rows.nth(0)).to_contain_text("R750.00")
    expect(rows.nth(1).locator("td").nth(4)).to_have_text("R775.50")
    portal.shot(page, "statement")

    with page.expect_download() as downloading:
        page.get_by_test_id("download-csv").click()
    download = downloading.value
    assert download.suggested_filename.startswith("statement-")
    downloaded = csv_rows(open(download.path()).read())
    with portal.api("wallet", org.key) as wallet:
        shown = wallet.get(f"/wallets/{org.wallet_id}/statement", params={
            "from": downloaded[1][2], "to": downloaded[-1][2]}).json()
    entries = [r for r in downloaded if r[0] == "entry"]
    assert [int(r[1]) for r in entries] == [e["entry_id"] for e in shown["entries"]]
    assert [int(r[8]) for r in entries] == [e["amount_minor"] for e in shown["entries"]]
    assert int(downloaded[1][8]) == shown["opening_balance_minor"] == 0
    assert int(downloaded[-1][8]) == shown["closing_balance_minor"] == 77_550

    page.click("text=Sign out")
    expect(page).to_have_url(re.compile(r"/signin$"))
    page.goto(f"{portal.url}/statement")
    expect(page).to_have_url(re.compile(r"/signin$"))  # the session is gone


def test_a_vm_beyond_funds_is_refused_and_one_within_is_provisioned(
        browser: Any, portal: Portal) -> None:
    org = portal.open_organisation(75_000)  # R750: a large VM (R600) fits, enterprise not
    page = sign_in(browser, portal, org.key)
    page.goto(f"{portal.url}/vms")
    expect(page.get_by_text("No VMs yet.")).to_be_visible()

    page.select_option("#vm-tier", "enterprise")
    estimate = page.get_by_test_id("estimate")
    expect(estimate).to_contain_text("R1,200.00 a month")
    expect(estimate).to_contain_text(
        "This VM needs R1,200.00 for its first month; R750.00 is available.")
    page.fill("#vm-name", "db-1")
    page.click("text=Ask for this VM")
    expect(page.get_by_test_id("flash")).to_have_text(
        "This VM needs R1,200.00 for its first month; R750.00 is available.")
    portal.shot(page, "vm-refused")

    page.select_option("#vm-tier", "large")
    expect(estimate).to_contain_text("R600.00 a month")
    expect(estimate).to_contain_text("R750.00 available")
    page.fill("#vm-name", "web-1")
    page.click("text=Ask for this VM")
    expect(page.get_by_test_id("flash")).to_contain_text("Asked for web-1 (large)")

    vm_row = page.locator("[data-testid=vm-row]", has_text="web-1")
    # Provisioning lists the VM from its request on; it runs once funds are held and
    # vCenter created it.
    _reload_until(page, vm_row.filter(has_text="running"), "the VM to run")
    page.click("[data-testid=wallet-status] summary")
    expect(page.get_by_test_id("status-held")).to_have_text("R600.00")
    expect(page.get_by_test_id("status-available")).to_have_text("R150.00")
    portal.shot(page, "vms")

    vm_row.locator("select[name=tier]").select_option("enterprise")
    expect(vm_row.locator(".estimate")).to_contain_text(
        "This resize needs R600.00 more a month; R150.00 is available.")
    vm_row.get_by_role("button", name="Resize").click()
    expect(page.get_by_test_id("flash")).to_have_text(
        "This resize needs R600.00 more a month; R150.00 is available.")
    vm_row.locator("select[name=tier]").select_option("medium")
    expect(vm_row.locator(".estimate")).to_contain_text("R300.00 a month")
    vm_row.get_by_role("button", name="Resize").click()
    expect(page.get_by_test_id("flash")).to_contain_text("Resize to medium asked for")
    _reload_until(page, page.locator("[data-testid=vm-row]", has_text="medium"),
                  "the VM to be resized")

    page.locator("[data-testid=vm-row]", has_text="web-1").locator("text=Delete").click()
    expect(page.get_by_test_id("flash")).to_contain_text("web-1 is being deleted")
    _reload_until(page, page.get_by_text("No VMs yet."), "the VM to be deleted")
    with portal.api("wallet", org.key) as wallet:
        reconciled = wallet.get(f"/wallets/{org.wallet_id}/reconciliation").json()
    assert reconciled["consistent"]


def test_auto_topup_is_switched_on_and_off(browser: Any, portal: Portal) -> None:
    org = portal.open_organisation(50_000)
    page = sign_in(browser, portal, org.key)
    page.goto(f"{portal.url}/topup")
    expect(page.get_by_test_id("topup-current")).to_have_text("Off.")
    expect(page.get_by_test_id("topup-history")).to_contain_text("R500.00")
    page.check("input[name=enabled]")
    page.fill("#threshold", "100.00")
    page.fill("#amount", "abc")
    page.fill("#card_token", "tok_visa_4242")
    page.click("text=Save")
    expect(page.get_by_test_id("flash")).to_contain_text("abc is not an amount")
    page.check("input[name=enabled]")  # a refused form shows the saved settings again
    page.fill("#threshold", "100.00")
    page.fill("#amount", "250")
    page.fill("#card_token", "tok_visa_4242")
    page.click("text=Save")
    expect(page.get_by_test_id("flash")).to_have_text("Auto top-up is on.")
    expect(page.get_by_test_id("topup-current")).to_have_text(
        "On: when available funds fall below R100.00, add R250.00 from your card.")
    portal.shot(page, "auto-topup")
    with portal.api("wallet", org.key) as wallet:
        status = wallet.get(f"/wallets/{org.wallet_id}").json()
    assert (status["auto_topup_threshold_minor"], status["auto_topup_amount_minor"]) == \
        (10_000, 25_000)
    page.uncheck("input[name=enabled]")
    page.click("text=Save")
    expect(page.get_by_test_id("topup-current")).to_have_text("Off.")


def test_a_declined_auto_topup_shows_with_its_reason(browser: Any, portal: Portal) -> None:
    # R500 with a trigger of R1,000: switching on asks billing for a top-up at once, and
    # the simulated gateway declines every `tok_decline...` card.
    org = portal.open_organisation(50_000)
    page = sign_in(browser, portal, org.key)
    page.goto(f"{portal.url}/topup")
    expect(page.get_by_test_id("topup-attempts")).to_have_count(0)
    page.check("input[name=enabled]")
    page.fill("#threshold", "1000.00")
    page.fill("#amount", "250")
    page.fill("#card_token", "tok_decline_expired")
    page.click("text=Save")
    expect(page.get_by_test_id("flash")).to_have_text("Auto top-up is on.")
    declined = page.locator("[data-testid=topup-attempt][data-outcome=declined]")
    _reload_until(page, declined, "the declined attempt")
    expect(declined).to_have_count(1)
    expect(declined).to_contain_text("R250.00")
    expect(declined).to_contain_text("card declined by issuer")
    portal.shot(page, "auto-topup-declined")
    with portal.api("billing", org.key) as billing:
        [attempt] = billing.get(f"/wallets/{org.wallet_id}/auto-topups").json()
    assert (attempt["outcome"], attempt["amount_minor"]) == ("declined", 25_000)
    with portal.api("wallet", org.key) as wallet:
        assert wallet.get(f"/wallets/{org.wallet_id}").json()["balance_minor"] == 50_000


def test_an_operator_suspends_and_resumes_a_wallet(browser: Any, portal: Portal) -> None:
    org = portal.open_organisation(75_000)
    page = sign_in(browser, portal, portal.operator_key)
    expect(page).to_have_url(re.compile(r"/operator$"))
    page.fill("input[name=organisation]", org.organisation_id)
    page.click("text=Find")
    expect(page.get_by_test_id("operator-wallet-name")).to_have_text(org.name)
    expect(page.get_by_test_id("wallet-state")).to_have_text("active")
    page.click("button:has-text('Suspend')")  # no reason: the browser asks for one
    expect(page.get_by_test_id("wallet-state")).to_have_text("active")
    page.fill("#reason", "card fraud check")
    page.click("button:has-text('Suspend')")
    expect(page.get_by_test_id("flash")).to_contain_text("Wallet suspended")
    expect(page.get_by_test_id("wallet-state")).to_have_text("suspended")
    portal.shot(page, "operator-suspended")

    customer = sign_in(browser, portal, org.key)
    customer.click("[data-testid=wallet-status] summary")
    expect(customer.get_by_test_id("status-warning").first).to_contain_text("suspended")
    customer.goto(f"{portal.url}/vms")
    customer.fill("#vm-name", "web-2")
    customer.select_option("#vm-tier", "small")
    customer.click("text=Ask for this VM")
    request = customer.locator("[data-testid=request]", has_text="web-2")
    _reload_until(customer, customer.locator("[data-testid=request][data-status=rejected]"),
                  "the suspended wallet to refuse the VM")
    expect(request).to_contain_text("rejected")

    page.fill("#reason", "checked")
    page.click("button:has-text('Resume')")
    expect(page.get_by_test_id("wallet-state")).to_have_text("active")
    with portal.api("wallet") as wallet:
        actions = wallet.get(f"/wallets/{org.wallet_id}/statement", params={
            "from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}).json()["key_actions"]
    assert [a["action"] for a in actions][-2:] == ["suspended", "resumed"]


def test_a_phone_sized_screen_shows_status_statement_and_vms(browser: Any,
                                                            portal: Portal) -> None:
    org = portal.open_organisation(75_000)
    page = sign_in(browser, portal, org.key, viewport=PHONE)
    expect(page).to_have_url(re.compile(r"/statement$"))
    page.click("[data-testid=wallet-status] summary")
    expect(page.get_by_test_id("status-available")).to_have_text("R750.00")
    assert _fits_width(page)
    portal.shot(page, "phone-statement")
    page.goto(f"{portal.url}/vms")
    page.select_option("#vm-tier", "medium")
    expect(page.get_by_test_id("estimate")).to_contain_text("R300.00 a month")
    assert _fits_width(page)
    portal.shot(page, "phone-vms")


def _fits_width(page: Any) -> bool:
    return bool(page.evaluate(
        "document.documentElement.scrollWidth <= window.innerWidth"))


def _reload_until(page: Any, locator: Any, what: str, attempts: int = 60) -> None:
    """The services work asynchronously (Kafka in between): reload until the page shows
    it, each look waiting on the browser rather than a fixed sleep."""
    for _ in range(attempts):
        try:
            expect(locator.first).to_be_visible(timeout=1_000)
            return
        except AssertionError:
            page.reload()
    raise AssertionError(f"the page never showed {what}")


def test_a_reseller_sees_its_customers_with_their_warnings(browser: Any,
                                                           portal: Portal) -> None:
    reseller = portal.open_organisation(10_000, kind="reseller")
    healthy = portal.open_organisation(75_000, reseller_id=reseller.organisation_id)
    low = portal.open_organisation(5_000, reseller_id=reseller.organisation_id)
    stranger = portal.open_organisation(75_000)
    page = sign_in(browser, portal, reseller.key)
    page.click("text=Customers")
    rows = page.get_by_test_id("customer")
    expect(rows).to_have_count(2)
    # named, in the order of their ids (as the key lists them)
    expect(page.get_by_test_id("customer-name")).to_have_text(
        [o.name for o in sorted([healthy, low], key=lambda o: o.organisation_id)])
    expect(rows.filter(has_text=healthy.organisation_id)).to_contain_text("R750.00")
    expect(rows.filter(has_text=healthy.organisation_id)).to_contain_text("none")
    expect(rows.filter(has_text=low.organisation_id)).to_contain_text("Low balance")
    expect(page.get_by_text(stranger.organisation_id)).to_have_count(0)
    expect(page.get_by_text(stranger.name)).to_have_count(0)
    portal.shot(page, "reseller-customers")


def test_an_operator_filters_wallets_and_a_refund_beyond_the_rules_is_refused(
        browser: Any, portal: Portal) -> None:
    low = portal.open_organisation(5_000)
    page = sign_in(browser, portal, portal.operator_key)
    page.select_option("[data-testid=wallet-filter]", "low_balance")
    page.click("text=Filter")
    listed = page.get_by_test_id("wallet-list")
    expect(listed.locator("tbody tr")).not_to_have_count(0)
    for status in listed.locator("tbody tr").all():
        expect(status).to_contain_text("low balance")
    with portal.api("wallet") as wallet:
        names = {w["organisation_id"]: w["name"]
                 for w in wallet.get("/wallets", params={"state": "low_balance"}).json()}
    assert low.organisation_id in names
    portal.shot(page, "operator-low-balance")

    page.click(f"text={names[low.organisation_id]}")
    expect(page.get_by_test_id("wallet-state")).to_have_text("active")
    entry = page.get_by_test_id("operator-entries").locator("tbody tr").first
    expect(entry).to_contain_text("top-up")
    entry.locator("input[name=amount]").fill("10.00")
    entry.locator("input[name=reason]").fill("goodwill")
    entry.locator("text=Refund").click()
    # A top-up is no charge: the wallet refuses, and the operator reads why.
    expect(page.get_by_test_id("flash")).to_contain_text("Refund refused")
    portal.shot(page, "operator-refund-refused")
    with portal.api("wallet") as wallet:
        assert wallet.get(f"/wallets/{low.wallet_id}").json()["balance_minor"] == 5_000


def test_the_simulation_page_shows_the_report_and_a_run_started_from_it(
        browser: Any, portal: Portal) -> None:
    org = portal.open_organisation(10_000)
    customer = sign_in(browser, portal, org.key)
    customer.click("text=Simulation")
    expect(customer.get_by_test_id("oracle")).to_have_text("exact")
    expect(customer.get_by_test_id("sectors").locator("tbody tr")).to_have_count(2)
    expect(customer.get_by_test_id("sectors")).to_contain_text("R45,678.00")
    # a USD wallet's money stays in USD, next to the ZAR total, never added to it
    expect(customer.get_by_test_id("sectors")).to_contain_text("USD 104.16")
    expect(customer.get_by_test_id("companies")).to_contain_text("USD 216.00")
    expect(customer.get_by_test_id("companies")).to_contain_text("FirstRand (FSR)")
    plot = customer.locator("img[src='/simulation/plots/balances.png']")
    expect(plot).to_be_visible()
    assert customer.evaluate("document.querySelector('img').naturalWidth") == 160
    expect(customer.locator("text=Start a small run")).to_have_count(0)  # operators only

    page = sign_in(browser, portal, portal.operator_key)
    page.click("text=Simulation")
    page.click("text=Start a small run")
    expect(page.get_by_test_id("flash")).to_have_text("A small simulation run started.")
    expect(page.get_by_test_id("run-output")).to_contain_text("oracle exact")
    expect(page.get_by_test_id("run-state")).to_contain_text("Finished (exit code 0)")
    portal.shot(page, "simulation")
