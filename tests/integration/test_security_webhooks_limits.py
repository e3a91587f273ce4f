"""The payment webhook against replays, stale or future timestamps and secret rotation;
request bodies over the size limit; API keys over their rate limit."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from shared.api_keys import issue_key
from shared.auth import Role
from shared.webhooks import webhook_headers
from tests.integration.wallet_fixtures import running_wallet

NEW_SECRET = "whsec_bmV3LXNlY3JldC1hZnRlci1yb3RhdGlvbg=="
OLD_SECRET = "whsec_b2xkLXNlY3JldC1iZWZvcmUtcm90YXRpb24="
UNKNOWN_SECRET = "whsec_c29tZWJvZHktZWxzZXMtc2VjcmV0"


def payment(wallet_id: UUID, amount: int, payment_id: str | None = None) -> bytes:
    return json.dumps({"payment_id": payment_id or uuid4().hex, "wallet_id": str(wallet_id),
                       "amount_minor": amount, "status": "succeeded"}).encode()


async def test_a_replayed_message_is_answered_without_effect(env):
    secret = env.settings.payment_webhook_secret
    async with running_wallet(env.settings) as (_, wallet):
        _, w = await wallet.open()
        body = payment(w, 1_000, "pay-1")
        headers = webhook_headers(secret, body, message_id="msg_1")
        first = await wallet.http.post("/webhooks/payments", content=body, headers=headers)
        assert first.json() == {"applied": True, "payment_id": "pay-1"}
        again = await wallet.http.post("/webhooks/payments", content=body, headers=headers)
        assert again.status_code == 200
        assert again.json() == {"applied": False, "duplicate_message": True,
                                "payment_id": "pay-1"}
        # The gateway retrying the payment as a new message: still one top-up.
        retried = await wallet.http.post("/webhooks/payments", content=body,
                                         headers=webhook_headers(secret, body))
        assert retried.json()["applied"] is False
        assert (await wallet.status(w))["balance_minor"] == 1_000
        await wallet.assert_consistent(w)


async def test_timestamps_more_than_five_minutes_away_are_refused(env):
    secret = env.settings.payment_webhook_secret
    async with running_wallet(env.settings) as (_, wallet):
        _, w = await wallet.open()
        now = datetime.now(UTC)
        for at in (now - timedelta(minutes=6), now + timedelta(minutes=6)):
            body = payment(w, 1_000)
            refused = await wallet.http.post("/webhooks/payments", content=body,
                                             headers=webhook_headers(secret, body, at=at))
            assert refused.status_code == 401
            assert refused.headers["content-type"] == "application/problem+json"
        for at in (now - timedelta(minutes=4), now + timedelta(minutes=4)):
            body = payment(w, 1_000)
            accepted = await wallet.http.post("/webhooks/payments", content=body,
                                              headers=webhook_headers(secret, body, at=at))
            assert accepted.status_code == 200 and accepted.json()["applied"], accepted.text
        assert (await wallet.status(w))["balance_minor"] == 2_000


async def test_two_secrets_are_valid_while_one_is_rotated(env):
    settings = env.settings.model_copy(update={"payment_webhook_secret": NEW_SECRET,
                                               "payment_webhook_previous_secret": OLD_SECRET})
    async with running_wallet(settings) as (_, wallet):
        _, w = await wallet.open()
        for secret, applied in ((NEW_SECRET, True), (OLD_SECRET, True), (UNKNOWN_SECRET, False)):
            body = payment(w, 100)
            r = await wallet.http.post("/webhooks/payments", content=body,
                                       headers=webhook_headers(secret, body))
            assert r.status_code == (200 if applied else 401), (secret, r.text)
        assert (await wallet.status(w))["balance_minor"] == 200


async def test_bodies_over_the_limit_are_refused_before_they_are_read(env):
    settings = env.settings.model_copy(update={"max_request_body_bytes": 4096})
    async with running_wallet(settings) as (_, wallet):
        huge = {"name": "x" * 5000}
        declared = await wallet.http.post("/organisations", json=huge)
        assert declared.status_code == 413
        assert declared.json()["detail"] == "the request body is over 4096 bytes"
        assert "xxxx" not in declared.text

        async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: chunked
            for _ in range(5):
                yield b" " * 1000

        chunked = await wallet.http.post("/organisations", content=streamed(),
                                         headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        body = payment(uuid4(), 1) + b" " * 5000
        webhook = await wallet.http.post("/webhooks/payments", content=body,
                                         headers=webhook_headers(
                                             settings.payment_webhook_secret, body))
        assert webhook.status_code == 413
        assert (await wallet.http.post("/organisations", json={"name": "fits"})
                ).status_code == 201


async def test_a_key_over_its_rate_is_told_when_to_come_back(env):
    settings = env.settings.model_copy(update={"api_rate_per_s": 0.01, "api_rate_burst": 3})
    async with running_wallet(settings) as (service, wallet):
        busy = (await issue_key(service.pool, name="busy", role=Role.OPERATOR)).token
        calm = (await issue_key(service.pool, name="calm", role=Role.OPERATOR)).token
        path = f"/wallets/{uuid4()}"
        answers = [await wallet.http.get(path, headers={"Authorization": f"Bearer {busy}"})
                   for _ in range(4)]
        assert [a.status_code for a in answers] == [404, 404, 404, 429]
        limited = answers[-1]
        assert int(limited.headers["Retry-After"]) >= 1
        assert limited.headers["content-type"] == "application/problem+json"
        assert limited.json()["status"] == 429
        other = await wallet.http.get(path, headers={"Authorization": f"Bearer {calm}"})
        assert other.status_code == 404  # each key has its own budget
