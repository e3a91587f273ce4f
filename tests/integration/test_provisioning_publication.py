"""ReserveFunds of an HTTP request is published straight after the request is stored, not
through the outbox: a send that fails is repeated, and a reservation a crash left unsent is
sent at the next start. Real broker and database."""

from __future__ import annotations

from typing import Any

import httpx

from shared.topics import PROVISIONING_REQUESTS, WALLET_DECISIONS
from tests.integration.test_provisioning_support import (  # noqa: F401
    MEDIUM_MONTHLY,
    Platform,
    platform_fixture,
)


async def test_a_failed_reservation_send_is_repeated(platform: Platform):
    org = await platform.open_organisation(balance_minor=100_000)
    requests_topic = platform.topic(PROVISIONING_REQUESTS.name)
    sender = platform.provisioning.relay.sender
    send = sender.send
    failed: list[int] = []

    async def fails_once(rows: Any) -> Any:
        rows = list(rows)
        if not failed and any(r[0] == requests_topic for r in rows):
            failed.append(len(rows))
            raise ConnectionError("broker unreachable")
        return await send(rows)

    sender.send = fails_once  # type: ignore[method-assign]
    r = await platform.request_vm(org["organisation_id"], "web-retry", tier="medium")
    assert r.status_code == 202, r.text
    request_id = r.json()["request_id"]
    done = await platform.wait_request(request_id, {"succeeded"})
    assert failed, "the reservation never went through the failing send"
    assert done["hold_minor"] == MEDIUM_MONTHLY
    decisions = await platform.all_messages(WALLET_DECISIONS.name)
    assert [d["request_id"] for d in decisions] == [request_id]


async def test_a_reservation_lost_in_a_crash_is_sent_at_the_next_start(platform: Platform):
    org = await platform.open_organisation(balance_minor=100_000)
    lost: list[int] = []

    def crash_before_publishing(messages: Any) -> None:
        lost.append(len(messages))

    platform.provisioning.handlers._publish = crash_before_publishing  # type: ignore[method-assign]
    r = await platform.request_vm(org["organisation_id"], "web-lost", tier="medium")
    assert r.status_code == 202, r.text
    request_id = r.json()["request_id"]
    assert lost == [1]
    await platform.provisioning.stop()
    assert await platform.status_in_db(request_id) == "awaiting_funds"
    # stopped, so whatever it had sent is on the broker: nothing is
    ends = await platform.kafka.end_offsets(platform.topic(PROVISIONING_REQUESTS.name))
    assert sum(ends.values()) == 0

    await platform.restart_provisioning()
    done = await platform.wait_request(request_id, {"succeeded"})
    assert done["hold_minor"] == MEDIUM_MONTHLY
    wallet = await platform.wait_wallet(org["wallet_id"], lambda w: w["held_minor"] > 0)
    assert wallet["held_minor"] == MEDIUM_MONTHLY


async def test_asking_again_for_a_request_awaiting_funds_sends_its_reservation_again(
        platform: Platform):
    """An error between storing a request and sending its reservation: the portal's retry
    (same idempotency key) gets the stored request and sends the reservation again."""
    org = await platform.open_organisation(balance_minor=100_000)
    first = await stored_but_not_sent(platform, org["organisation_id"], "web-again", "again-1")
    again = await platform.request_vm(org["organisation_id"], "web-again", key="again-1")
    assert again.status_code == 200 and again.json()["request_id"] == first.json()["request_id"]
    done = await platform.wait_request(first.json()["request_id"], {"succeeded"})
    assert done["hold_minor"] == MEDIUM_MONTHLY


async def test_the_sweep_sends_again_only_requests_waiting_since_the_last_one(
        platform: Platform):
    org = await platform.open_organisation(balance_minor=100_000)
    r = await stored_but_not_sent(platform, org["organisation_id"], "web-swept", "swept-1")
    handlers = platform.provisioning.handlers
    assert await handlers.resend_reservations() == 0, "just received: not yet"
    assert await handlers.resend_reservations() == 1, "still waiting a sweep later"
    done = await platform.wait_request(r.json()["request_id"], {"succeeded"})
    assert done["hold_minor"] == MEDIUM_MONTHLY


async def stored_but_not_sent(platform: Platform, organisation_id: str, name: str,
                              key: str) -> httpx.Response:
    """A VM request stored whose reservation was never sent (an error in between)."""
    handlers = platform.provisioning.handlers
    publish = handlers._publish
    handlers._publish = lambda messages: None  # type: ignore[method-assign]
    try:
        r = await platform.request_vm(organisation_id, name, key=key)
    finally:
        handlers._publish = publish  # type: ignore[method-assign]
    assert r.status_code == 202, r.text
    return r
