"""Running VMs: resize through the wallet's reserve/reject path, suspension when the wallet
is depleted and resume when funds return, and deletion releasing what is held."""

from __future__ import annotations

from uuid import UUID, uuid4

from shared.contracts.wallet import DebitWallet
from shared.money import MoneyModel
from shared.topics import BILLING_DEBITS, PROVISIONING_OUTCOMES, VCENTER_COMMANDS
from tests.integration.test_provisioning_support import (  # noqa: F401
    MEDIUM_MONTHLY,
    Platform,
    platform_fixture,
)

SMALL_MONTHLY = 15_000
ENTERPRISE_MONTHLY = 120_000


async def _running_vm(platform: Platform, org: dict[str, str], tier: str, name: str
                      ) -> dict[str, object]:
    r = await platform.request_vm(org["organisation_id"], name, tier=tier)
    done = await platform.wait_request(r.json()["request_id"], {"succeeded"})
    return await platform.wait_vm(done["vm_id"], lambda v: v["power_state"] == "running")


async def test_resize_within_and_beyond_funds(platform: Platform):
    org = await platform.open_organisation(balance_minor=100_000)
    vm = await _running_vm(platform, org, "small", "app-1")
    vm_id = vm["vm_id"]

    up = await platform.http.post(f"/vms/{vm_id}/resize", json={"tier": "medium"},
                                  headers={"Idempotency-Key": "up-1"})
    assert up.status_code == 202, up.text
    assert up.json()["hold_minor"] == MEDIUM_MONTHLY - SMALL_MONTHLY
    repeat = await platform.http.post(f"/vms/{vm_id}/resize", json={"tier": "medium"},
                                      headers={"Idempotency-Key": "up-1"})
    assert repeat.status_code == 200 and repeat.json()["request_id"] == up.json()["request_id"]
    await platform.wait_request(up.json()["request_id"], {"succeeded"})
    resized = await platform.wait_vm(vm_id, lambda v: v["spec"]["tier"] == "medium")
    assert resized["power_state"] == "running"
    wallet = await platform.wait_wallet(org["wallet_id"],
                                        lambda w: w["held_minor"] == MEDIUM_MONTHLY)
    assert wallet["available_minor"] == 100_000 - MEDIUM_MONTHLY

    # Enterprise needs R900 more a month; only R700 is available.
    beyond = await platform.http.post(f"/vms/{vm_id}/resize", json={"tier": "enterprise"})
    assert beyond.json()["hold_minor"] == ENTERPRISE_MONTHLY - MEDIUM_MONTHLY
    rejected = await platform.wait_request(beyond.json()["request_id"], {"rejected"})
    assert rejected["reason"].startswith("insufficient_funds")
    assert (await platform.vm(vm_id)).json()["spec"]["tier"] == "medium"

    # Smaller needs no hold: straight to vCenter.
    down = await platform.http.post(f"/vms/{vm_id}/resize", json={"tier": "small"})
    assert down.status_code == 202 and down.json()["hold_minor"] == 0
    assert down.json()["status"] == "awaiting_vcenter"
    await platform.wait_request(down.json()["request_id"], {"succeeded"})
    await platform.wait_vm(vm_id, lambda v: v["spec"]["tier"] == "small")
    same = await platform.http.post(f"/vms/{vm_id}/resize", json={"tier": "small"})
    assert same.status_code == 422 and "already has this size" in same.json()["detail"]

    commands = await platform.all_messages(VCENTER_COMMANDS.name)
    resizes = [c["spec"]["tier"] for c in commands if c["type"] == "vcenter.resize_vm"]
    assert resizes == ["medium", "small"]  # never enterprise
    assert (await platform.wallet_status(org["wallet_id"]))["held_minor"] == MEDIUM_MONTHLY


async def test_one_idempotency_key_resizes_two_vms_of_an_organisation(platform: Platform):
    """A resize's key is scoped to its VM (the URL names it): the same key on another VM is
    another resize, stored and reserved like the first."""
    org = await platform.open_organisation(balance_minor=100_000)
    first = await _running_vm(platform, org, "small", "app-1")
    second = await _running_vm(platform, org, "small", "app-2")
    accepted = []
    for vm in (first, second):
        r = await platform.http.post(f"/vms/{vm['vm_id']}/resize", json={"tier": "medium"},
                                     headers={"Idempotency-Key": "upsize"})
        assert r.status_code == 202, r.text
        accepted.append(r.json()["request_id"])
    assert accepted[0] != accepted[1]
    for request_id in accepted:
        await platform.wait_request(request_id, {"succeeded"})
    for vm in (first, second):
        await platform.wait_vm(str(vm["vm_id"]), lambda v: v["spec"]["tier"] == "medium")
    await platform.wait_wallet(org["wallet_id"], lambda w: w["held_minor"] == 2 * MEDIUM_MONTHLY)


async def test_depleted_wallet_suspends_running_vms_and_top_up_resumes_them(
        platform: Platform):
    org = await platform.open_organisation(balance_minor=100_000)
    first = await _running_vm(platform, org, "small", "a")
    second = await _running_vm(platform, org, "small", "b")
    bystander_org = await platform.open_organisation(balance_minor=100_000)
    bystander = await _running_vm(platform, bystander_org, "small", "c")

    # Usage eats the balance: available = 100_000 - 80_000 - 30_000 held < 0 -> depleted.
    debit = DebitWallet(debit_id=uuid4(), wallet_id=UUID(org["wallet_id"]),
                        amount=MoneyModel(amount_minor=80_000), description="usage")
    await platform.kafka.publish(platform.topic(BILLING_DEBITS.name), debit.wallet_id, debit)
    for vm in (first, second):
        off = await platform.wait_vm(str(vm["vm_id"]), lambda v: v["power_state"] == "powered_off",
                                     "suspension")
        assert off["suspended_for_funds"] is True
    organisation = (await platform.http.get(f"/organisations/{org['organisation_id']}")).json()
    assert organisation["suspended"] is True

    await platform.top_up(org["wallet_id"], 50_000)
    for vm in (first, second):
        on = await platform.wait_vm(str(vm["vm_id"]), lambda v: v["power_state"] == "running",
                                    "resume")
        assert on["suspended_for_funds"] is False
    commands = await platform.all_messages(VCENTER_COMMANDS.name)
    power = [(c["type"], c["vm_id"]) for c in commands if "power" in c["type"]]
    assert sorted(power) == sorted([
        ("vcenter.power_off_vm", str(first["vm_id"])),
        ("vcenter.power_off_vm", str(second["vm_id"])),
        ("vcenter.power_on_vm", str(first["vm_id"])),
        ("vcenter.power_on_vm", str(second["vm_id"])),
    ])
    assert (await platform.vm(str(bystander["vm_id"]))).json()["power_state"] == "running"


async def test_deleting_a_vm_decommissions_it_and_releases_its_hold(platform: Platform):
    org = await platform.open_organisation(balance_minor=100_000)
    vm = await _running_vm(platform, org, "medium", "old")
    await platform.wait_wallet(org["wallet_id"], lambda w: w["held_minor"] == MEDIUM_MONTHLY)
    deleting = await platform.http.delete(f"/vms/{vm['vm_id']}")
    assert deleting.status_code == 202 and deleting.json()["power_state"] == "deleting"
    await platform.wait_vm(str(vm["vm_id"]), lambda v: v["power_state"] == "deleted")
    outcomes = await platform.all_messages(
        PROVISIONING_OUTCOMES.name, lambda m: m["type"] == "provisioning.vm_decommissioned")
    assert [o["vm_id"] for o in outcomes] == [vm["vm_id"]]
    await platform.wait_wallet(org["wallet_id"], lambda w: w["held_minor"] == 0,
                               "the hold to be released")
    gone = await platform.http.post(f"/vms/{vm['vm_id']}/resize", json={"tier": "large"})
    assert gone.status_code == 409
