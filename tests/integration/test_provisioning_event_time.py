"""A simulation in the past (EVENT_CLOCK=ticks): a VM requested over HTTP, which carries no
time of its own, is stamped with provisioning's last clock tick, and so is everything it
causes (the hold, vCenter's commands and events), never today's date."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.test_provisioning_support import (  # noqa: F401
    Platform,
    eventually,
    platform_fixture,
)

PAST = datetime(2025, 5, 10, 8, tzinfo=UTC)


@pytest.fixture
def env(env):  # type: ignore[no-untyped-def]
    """The test's environment with clock ticks as the one clock."""
    return dataclasses.replace(
        env, settings=env.settings.model_copy(update={"event_clock": "ticks"}))


async def test_a_vm_requested_over_http_in_a_past_simulation_carries_the_ticks_time(
        platform: Platform, db):
    assert platform.env.settings.event_clock == "ticks"
    await platform.tick(PAST)
    await eventually(lambda: db.fetchval("SELECT now FROM provisioning.clock WHERE id = 1"),
                     lambda now: now == PAST, what="provisioning to see the tick")
    await eventually(lambda: db.fetchval("SELECT now FROM wallet.clock WHERE id = 1"),
                     lambda now: now == PAST, what="the wallet to see the tick")
    org = await platform.open_organisation(balance_minor=100_000)

    r = await platform.request_vm(org["organisation_id"], "web-1", tier="medium")
    assert r.status_code == 202, r.text
    assert datetime.fromisoformat(r.json()["received_at"]) == PAST
    done = await platform.wait_request(r.json()["request_id"], {"succeeded"})
    vm = await platform.wait_vm(done["vm_id"], lambda v: v["power_state"] == "running")
    # vCenter's simulator creates the VM 30 s after the command, in event time
    assert datetime.fromisoformat(vm["created_at"]) == PAST + timedelta(seconds=30)
    entry_at = await db.fetchval(
        "SELECT min(occurred_at) FROM wallet.wallet_transactions WHERE wallet_id = $1::uuid",
        org["wallet_id"])
    assert entry_at == PAST  # the top-up without a time of its own: the wallet's clock
