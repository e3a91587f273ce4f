"""Portal intake over HTTP and Kafka: idempotency keys, estimates, and bad input refused
with a reason (HTTP 4xx, or a dead letter that does not stall the consumer)."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from uuid import UUID, uuid4

from services.provisioning.submissions import request_id_for
from shared.contracts.portal import RequestVm
from shared.contracts.vm import VmSpec
from shared.topics import DEAD_LETTER, PORTAL_VM_REQUESTS, VCENTER_COMMANDS
from tests.integration.test_provisioning_support import (  # noqa: F401
    MEDIUM_MONTHLY,
    Platform,
    platform_fixture,
)


async def test_same_idempotency_key_over_http_and_kafka_makes_one_vm(platform: Platform):
    org = await platform.open_organisation(balance_minor=500_000)
    org_id = org["organisation_id"]
    responses = await asyncio.gather(*[
        platform.request_vm(org_id, "web-1", key="order-42", tier="medium") for _ in range(5)])
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 200, 202]
    request_ids = {r.json()["request_id"] for r in responses}
    assert len(request_ids) == 1
    (request_id,) = request_ids

    portal = platform.topic(PORTAL_VM_REQUESTS.name)
    same = RequestVm(idempotency_key="order-42", organisation_id=UUID(org_id), name="web-1",
                     spec=VmSpec.of_tier("medium"))
    fresh = RequestVm(idempotency_key="order-43", organisation_id=UUID(org_id), name="web-2",
                      spec=VmSpec.of_tier("small"))
    for message in (same, fresh, same, fresh):  # redelivered and repeated
        await platform.kafka.publish(portal, org_id, message)

    kafka_request = str(request_id_for(UUID(org_id), "order-43"))
    done = await platform.wait_request(kafka_request, {"succeeded"})
    await platform.wait_request(request_id, {"succeeded"})
    assert done["name"] == "web-2" and done["hold_minor"] == 15_000
    wallet = await platform.wait_wallet(org["wallet_id"],
                                        lambda w: w["held_minor"] == MEDIUM_MONTHLY + 15_000)
    assert wallet["available_minor"] == 500_000 - MEDIUM_MONTHLY - 15_000
    commands = await platform.all_messages(VCENTER_COMMANDS.name)  # duplicates included
    assert sorted(c["name"] for c in commands if c["type"] == "vcenter.create_vm") == \
        ["web-1", "web-2"]

    reused = await platform.request_vm(org_id, "web-other", key="order-42", tier="medium")
    assert reused.status_code == 409 and "already used" in reused.json()["detail"]
    assert "order-42" not in reused.text


async def test_invalid_http_requests_get_4xx_with_a_reason(platform: Platform):
    org = await platform.open_organisation(balance_minor=100_000)
    org_id = org["organisation_id"]
    body = {"organisation_id": org_id, "name": "web", "tier": "medium"}

    missing_key = await platform.http.post("/vm-requests", json=body)
    assert missing_key.status_code == 400 and "Idempotency-Key" in missing_key.json()["detail"]
    cases = [
        ({"tier": "huge"}, 422, "unknown tier 'huge'"),
        ({"tier": "small", "vcpu": 4}, 422, "tier small is 1 vCPU / 2 GB"),
        ({"vcpu": 2}, 422, "needs vcpu and ram_gb"),
        ({"vcpu": 0, "ram_gb": 2}, 422, "vcpu"),
        ({"vcpu": 2, "ram_gb": 4, "disk_gb": 1}, 422, "disk_gb"),
    ]
    for size, status, reason in cases:
        r = await platform.request_vm(org_id, **size)
        assert r.status_code == status and reason in r.json()["detail"], (size, r.text)
    unknown = await platform.request_vm(str(uuid4()), tier="small")
    assert unknown.status_code == 404 and "unknown organisation" in unknown.json()["detail"]
    # text the database cannot store is refused alone: the request sent with it goes on
    def post(name: str) -> Any:  # the body as JSON text: "\ud800" escaped, as a client sends
        return platform.http.post("/vm-requests", content=json.dumps({
            "organisation_id": org_id, "name": name, "tier": "small"}).encode(),
            headers={"Idempotency-Key": uuid4().hex, "content-type": "application/json"})

    good, nul, surrogate = await asyncio.gather(post("fine"), post("web\u0000"),
                                                post("\ud800"))
    assert (good.status_code, nul.status_code, surrogate.status_code) == (202, 422, 422)
    assert "NUL" in nul.text
    assert (await platform.http.get(f"/vm-requests/{uuid4()}")).status_code == 404
    assert (await platform.http.post(f"/vms/{uuid4()}/resize",
                                     json={"tier": "large"})).status_code == 404
    assert (await platform.http.get(f"/vms/{uuid4()}")).status_code == 404
    # Nothing was reserved for any of them but the good one.
    await platform.wait_request(good.json()["request_id"], {"awaiting_vcenter", "succeeded"})
    assert (await platform.wallet_status(org["wallet_id"]))["held_minor"] == 15_000


async def test_bad_kafka_requests_are_dead_lettered_and_do_not_stall_intake(
        platform: Platform):
    org = await platform.open_organisation(balance_minor=100_000)
    portal = platform.topic(PORTAL_VM_REQUESTS.name)
    stranger = RequestVm(idempotency_key="k1", organisation_id=uuid4(), name="x",
                         spec=VmSpec.of_tier("small"))
    await platform.kafka.publish(portal, "x", b"not json at all")
    await platform.kafka.publish(portal, "x", (
        '{"type":"portal.request_vm","idempotency_key":"k2","organisation_id":"'
        + org["organisation_id"]
        + '","name":"x","spec":{"tier":"huge","vcpu":1,"ram_gb":2}}').encode())
    await platform.kafka.publish(portal, stranger.organisation_id, stranger)
    good = RequestVm(idempotency_key="k3", organisation_id=UUID(org["organisation_id"]),
                     name="after-the-bad-ones", spec=VmSpec.of_tier("small"))
    await platform.kafka.publish(portal, good.organisation_id, good)

    done = await platform.wait_request(
        str(request_id_for(good.organisation_id, "k3")), {"succeeded"})
    letters = await platform.all_messages(DEAD_LETTER.name)
    assert all(letter["consumer"] == "provisioning" for letter in letters)
    # three keys, so no order between the letters: one letter for each bad request
    reasons = sorted(letter["reason"] for letter in letters)
    assert len(reasons) == 3, reasons
    assert reasons[0].startswith("invalid message")
    assert "spec.tier" in reasons[0] or "spec.tier" in reasons[1]
    assert sum(r.startswith("invalid message") for r in reasons) == 2
    assert f"unknown organisation {stranger.organisation_id}" in reasons
    assert done["name"] == "after-the-bad-ones"


async def test_estimates_and_rate_cards(platform: Platform):
    medium = (await platform.http.post("/estimates", json={"tier": "medium"})).json()
    assert medium["monthly_minor"] == MEDIUM_MONTHLY
    assert medium["hourly_minor"] == 42  # R300 / 730 h, rounded up
    assert medium["rate_card_version"] == "2025-01" and medium["currency"] == "ZAR"
    custom = (await platform.http.post("/estimates", json={
        "vcpu": 2, "ram_gb": 4, "disk_gb": 100})).json()
    assert custom["hourly_minor"] == 2 * 12 + 4 * 4 + 2  # per vCPU, GB RAM, GB disk hour
    assert custom["monthly_minor"] == custom["hourly_minor"] * 730
    before = await platform.http.post("/estimates", json={
        "tier": "small", "at": "2020-01-01T00:00:00Z"})
    assert before.status_code == 422 and "no rate card" in before.json()["detail"]
    bad = await platform.http.post("/estimates", json={"tier": "xl"})
    assert bad.status_code == 422
    unknown = await platform.http.post("/estimates", json={"tier": "small",
                                                           "organisation_id": str(uuid4())})
    assert unknown.status_code == 404
    cards = (await platform.http.get("/rate-cards")).json()
    assert [c["version"] for c in cards] == ["2025-01"]
    assert cards[0]["disk_gb_hour_minor"] == "1/50"
    assert cards[0]["tier_monthly_minor"]["enterprise"] == 120_000
