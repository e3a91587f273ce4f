"""The provisioning saga end to end on the real broker and database: wallet, provisioning
and the vCenter simulator in-process, driven through their HTTP APIs and Kafka topics."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID, uuid4

import asyncpg

from shared.contracts.vcenter import VmCreated
from shared.contracts.vm import VmSpec
from shared.topics import (
    PROVISIONING_OUTCOMES,
    VCENTER_COMMANDS,
    VCENTER_EVENTS,
    WALLET_DECISIONS,
)
from tests.integration.test_provisioning_support import (  # noqa: F401
    MEDIUM_MONTHLY,
    Platform,
    eventually,
    platform_fixture,
)


async def test_success_holds_a_month_creates_the_vm_and_keeps_the_hold(platform: Platform):
    org = await platform.open_organisation(balance_minor=100_000)
    r = await platform.request_vm(org["organisation_id"], "web-1", tier="medium")
    assert r.status_code == 202, r.text
    request = r.json()
    assert request["status"] == "awaiting_funds"
    assert request["hold_minor"] == MEDIUM_MONTHLY
    assert request["rate_card_version"] == "2025-01"

    done = await platform.wait_request(request["request_id"], {"succeeded"})
    assert done["hold_id"] is not None
    vm = await platform.wait_vm(done["vm_id"], lambda v: v["power_state"] == "running")
    assert vm["spec"]["tier"] == "medium" and vm["created_request_id"] == done["request_id"]
    outcomes = await platform.all_messages(PROVISIONING_OUTCOMES.name)
    assert [o["type"] for o in outcomes] == ["provisioning.succeeded"]
    wallet = await platform.wallet_status(org["wallet_id"])
    assert wallet["held_minor"] == MEDIUM_MONTHLY
    assert wallet["available_minor"] == 100_000 - MEDIUM_MONTHLY


async def test_rejected_for_insufficient_funds_sends_nothing_to_vcenter(platform: Platform):
    org = await platform.open_organisation(balance_minor=MEDIUM_MONTHLY - 1)
    r = await platform.request_vm(org["organisation_id"], tier="medium")
    rejected = await platform.wait_request(r.json()["request_id"], {"rejected"})
    assert rejected["reason"].startswith("insufficient_funds")
    assert (await platform.vm(rejected["vm_id"])).status_code == 404
    # A request that passes afterwards proves vcenter.commands was readable all along.
    ok = await platform.request_vm(org["organisation_id"], tier="small")
    await platform.wait_request(ok.json()["request_id"], {"succeeded"})
    commands = await platform.all_messages(VCENTER_COMMANDS.name)
    assert [c["vm_id"] for c in commands] == [ok.json()["vm_id"]]
    wallet = await platform.wallet_status(org["wallet_id"])
    assert wallet["held_minor"] == 15_000


async def test_vcenter_failure_fails_the_request_and_releases_the_funds(platform: Platform):
    org = await platform.open_organisation(balance_minor=100_000)
    r = await platform.request_vm(org["organisation_id"], "fail-db", tier="medium")
    failed = await platform.wait_request(r.json()["request_id"], {"failed"})
    assert failed["reason"].startswith("vcenter: simulated failure")
    outcomes = await platform.all_messages(PROVISIONING_OUTCOMES.name)
    assert [o["type"] for o in outcomes] == ["provisioning.failed"]
    wallet = await platform.wait_wallet(org["wallet_id"], lambda w: w["held_minor"] == 0,
                                        "the hold to be released")
    assert wallet["available_minor"] == 100_000
    assert (await platform.vm(failed["vm_id"])).status_code == 404


async def test_no_vcenter_answer_times_out_in_event_time_and_releases(platform: Platform):
    org = await platform.open_organisation(balance_minor=100_000)
    r = await platform.request_vm(org["organisation_id"], "hang-1", tier="medium")
    waiting = await platform.wait_request(r.json()["request_id"], {"awaiting_vcenter"})
    await platform.wait_wallet(org["wallet_id"], lambda w: w["held_minor"] == MEDIUM_MONTHLY)
    deadline = datetime.fromisoformat(waiting["deadline"])
    timeout = platform.env.settings.vcenter_timeout_seconds
    assert deadline - datetime.fromisoformat(waiting["updated_at"]) == timedelta(seconds=timeout)

    await platform.tick(deadline - timedelta(seconds=1))
    await platform.settled()  # a tick before the deadline must not end the request
    assert (await platform.request(waiting["request_id"]))["status"] == "awaiting_vcenter"

    await platform.tick(deadline)
    failed = await platform.wait_request(waiting["request_id"], {"failed"})
    assert failed["reason"].startswith("timeout: no answer from vCenter")
    await platform.wait_wallet(org["wallet_id"], lambda w: w["held_minor"] == 0,
                               "the hold to be released")


async def test_cancel_before_vcenter_answers_releases_and_late_vm_is_deleted(
        platform: Platform):
    org = await platform.open_organisation(balance_minor=100_000)
    # The simulator never answers `hang-` names, so the cancel surely comes first.
    r = await platform.request_vm(org["organisation_id"], "hang-cancel", tier="medium")
    request_id = r.json()["request_id"]
    await platform.wait_request(request_id, {"awaiting_vcenter"})
    cancelled = await platform.http.post(f"/vm-requests/{request_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = await platform.http.post(f"/vm-requests/{request_id}/cancel")
    assert again.status_code == 200  # cancelling twice is harmless
    await platform.wait_wallet(org["wallet_id"], lambda w: w["held_minor"] == 0,
                               "the hold to be released")
    outcomes = await platform.all_messages(PROVISIONING_OUTCOMES.name)
    assert [o["type"] for o in outcomes] == ["provisioning.cancelled"]

    # vCenter creates it after all: the VM is deleted again and nothing is held for it.
    late = VmCreated(vm_id=r.json()["vm_id"], request_id=request_id,
                     organisation_id=org["organisation_id"], wallet_id=org["wallet_id"],
                     spec=VmSpec.of_tier("medium"))
    await platform.kafka.publish(platform.topic(VCENTER_EVENTS.name), late.vm_id, late)
    vm = await platform.wait_vm(str(late.vm_id), lambda v: v["power_state"] == "deleted")
    assert vm["created_request_id"] == request_id
    decommissioned = await platform.all_messages(
        PROVISIONING_OUTCOMES.name, lambda m: m["type"] == "provisioning.vm_decommissioned")
    assert len(decommissioned) == 1
    assert decommissioned[0]["vm_id"] == str(late.vm_id)
    assert (await platform.request(request_id))["status"] == "cancelled"
    assert (await platform.wallet_status(org["wallet_id"]))["held_minor"] == 0


async def test_a_finished_request_cannot_be_cancelled(platform: Platform):
    org = await platform.open_organisation(balance_minor=100_000)
    r = await platform.request_vm(org["organisation_id"], tier="small")
    done = await platform.wait_request(r.json()["request_id"], {"succeeded"})
    refused = await platform.http.post(f"/vm-requests/{done['request_id']}/cancel")
    assert refused.status_code == 409 and "succeeded" in refused.json()["detail"]
    assert (await platform.http.post(f"/vm-requests/{uuid4()}/cancel")).status_code == 404


async def test_provisioning_crash_mid_saga_resumes_where_it_stopped(platform: Platform):
    org = await platform.open_organisation(balance_minor=100_000)
    r = await platform.request_vm(org["organisation_id"], "web-crash", tier="medium")
    request_id = r.json()["request_id"]
    # Down right after the request was committed: the wallet decides while it is away.
    await platform.provisioning.stop()
    decisions = await platform.messages(WALLET_DECISIONS.name, 1)  # provisioning is down
    assert decisions[0]["type"] == "wallet.funds_reserved"
    assert (await platform.status_in_db(request_id)) == "awaiting_funds"

    await platform.restart_provisioning()
    done = await platform.wait_request(request_id, {"succeeded"})
    await platform.wait_vm(done["vm_id"], lambda v: v["power_state"] == "running")
    # The outcome and the clock travel on different topics: jumping the clock two hours
    # before the wallet has the outcome would (rightly) expire the still-pending hold.
    await eventually(lambda: _hold_status_in_db(platform, request_id), lambda s: s == "active",
                     what="the wallet to confirm the hold")
    await platform.tick(datetime.fromisoformat(done["updated_at"]) + timedelta(hours=2))
    await platform.settled()  # a later tick must not time out a finished request
    assert (await platform.request(request_id))["status"] == "succeeded"
    commands = await platform.all_messages(VCENTER_COMMANDS.name)
    assert [c["type"] for c in commands] == ["vcenter.create_vm"]
    outcomes = await platform.all_messages(PROVISIONING_OUTCOMES.name)
    assert [o["type"] for o in outcomes] == ["provisioning.succeeded"]
    wallet = await platform.wallet_status(org["wallet_id"])
    assert wallet["held_minor"] == MEDIUM_MONTHLY




async def _hold_status_in_db(platform: Platform, request_id: str) -> str | None:
    conn = await asyncpg.connect(platform.env.database_url)
    try:
        status: str | None = await conn.fetchval(
            "SELECT status FROM wallet.holds WHERE request_id = $1", UUID(request_id))
        return status
    finally:
        await conn.close()
