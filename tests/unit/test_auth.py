"""API keys, roles and the webhook scheme: the pure rules (shared/auth.py,
shared/webhooks.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from shared.auth import (
    InvalidKey,
    Principal,
    Role,
    StoredKey,
    TokenBucket,
    check_key_request,
    generate_key,
    hash_token,
    key_id_of,
    verify,
)
from shared.webhooks import WebhookVerificationError, verified_message_id, webhook_headers

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
OWN, CUSTOMER, OTHER = uuid4(), uuid4(), uuid4()


def stored(token: str, **changes: object) -> StoredKey:
    fields: dict[str, object] = dict(
        key_id=key_id_of(token), secret_hash=hash_token(token), role=Role.ORGANISATION,
        organisation_id=OWN, expires_at=None, revoked_at=None)
    fields.update(changes)
    return StoredKey(**fields)  # type: ignore[arg-type]


def test_keys_are_random_and_only_their_hash_is_kept():
    first, second = generate_key(), generate_key()
    assert first.token != second.token and first.key_id != second.key_id
    assert first.token.startswith(f"cw_{first.key_id}_")
    assert key_id_of(first.token) == first.key_id
    assert first.secret_hash == hash_token(first.token) and len(first.secret_hash) == 32
    assert first.token.encode() not in first.secret_hash


@pytest.mark.parametrize("token", ["", "Bearer x", "cw_123_abc", "cw_zzzzzzzzzzzz_" + "a" * 43,
                                   generate_key().token + "x"])
def test_what_is_not_a_key_is_refused_before_any_lookup(token):
    with pytest.raises(InvalidKey):
        key_id_of(token)


def test_a_valid_key_gives_its_caller():
    key = generate_key()
    caller = verify(key.token, stored(key.token), NOW)
    assert caller == Principal(key.key_id, Role.ORGANISATION, OWN, frozenset())


def test_unknown_wrong_revoked_and_expired_keys_are_refused():
    key, other = generate_key(), generate_key()
    with pytest.raises(InvalidKey):
        verify(key.token, None, NOW)
    with pytest.raises(InvalidKey):  # the right id with another secret
        verify(key.token, stored(key.token, secret_hash=other.secret_hash), NOW)
    with pytest.raises(InvalidKey, match="revoked"):
        verify(key.token, stored(key.token, revoked_at=NOW - timedelta(seconds=1)), NOW)
    with pytest.raises(InvalidKey, match="expired"):
        verify(key.token, stored(key.token, expires_at=NOW), NOW)
    assert verify(key.token, stored(key.token, expires_at=NOW + timedelta(seconds=1)), NOW)


ROLE_TABLE = [
    # role, may read own / customer's / other's, may act for own / customer / other
    (Role.ORGANISATION, (True, False, False), (True, False, False)),
    (Role.RESELLER, (True, True, False), (True, False, False)),
    (Role.OPERATOR, (True, True, True), (False, False, False)),
    (Role.INTEGRATION, (False, False, False), (False, False, False)),
]


@pytest.mark.parametrize(("role", "reads", "acts"), ROLE_TABLE)
def test_what_each_role_may_read_and_do(role, reads, acts):
    organisation = OWN if role in (Role.ORGANISATION, Role.RESELLER) else None
    customers = frozenset({CUSTOMER}) if role is Role.RESELLER else frozenset()
    caller = Principal("k", role, organisation, customers)
    assert (caller.may_read(OWN), caller.may_read(CUSTOMER), caller.may_read(OTHER)) == reads
    assert (caller.may_act_for(OWN), caller.may_act_for(CUSTOMER),
            caller.may_act_for(OTHER)) == acts


def test_organisation_keys_name_their_organisation_and_others_none():
    check_key_request(Role.ORGANISATION, OWN)
    check_key_request(Role.OPERATOR, None)
    with pytest.raises(ValueError, match="needs an organisation"):
        check_key_request(Role.RESELLER, None)
    with pytest.raises(ValueError, match="cannot name"):
        check_key_request(Role.INTEGRATION, OWN)


def test_token_bucket_allows_bursts_then_says_how_long_to_wait():
    bucket = TokenBucket(rate=2, burst=3, tokens=3, updated=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0  # one token came back in half a second
    assert bucket.take(100.0) == 0.0 and bucket.tokens == 2  # never above the burst


SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD_SECRET = "whsec_dGhlLXByZXZpb3VzLXNlY3JldA=="


def test_webhook_signed_with_either_valid_secret_is_accepted():
    body = b'{"payment_id": "p1"}'
    for secret in (SECRET, OLD_SECRET):
        headers = webhook_headers(secret, body, message_id="msg_1")
        assert verified_message_id([SECRET, OLD_SECRET], body, headers) == "msg_1"
    with pytest.raises(WebhookVerificationError):
        verified_message_id([SECRET], body, webhook_headers(OLD_SECRET, body))


def test_webhook_covers_id_timestamp_and_body():
    body = b'{"amount_minor": 100}'
    headers = webhook_headers(SECRET, body, message_id="msg_1")
    with pytest.raises(WebhookVerificationError):
        verified_message_id([SECRET], b'{"amount_minor": 900}', headers)
    with pytest.raises(WebhookVerificationError):
        verified_message_id([SECRET], body, {**headers, "webhook-id": "msg_2"})
    later = str(int(headers["webhook-timestamp"]) + 1)
    with pytest.raises(WebhookVerificationError):
        verified_message_id([SECRET], body, {**headers, "webhook-timestamp": later})
    with pytest.raises(WebhookVerificationError):
        verified_message_id([SECRET], body, {"webhook-id": "msg_1"})


@pytest.mark.parametrize("offset", [timedelta(minutes=-6), timedelta(minutes=6)])
def test_webhook_timestamps_over_five_minutes_from_now_are_refused(offset):
    body = b"{}"
    headers = webhook_headers(SECRET, body, at=datetime.now(UTC) + offset)
    with pytest.raises(WebhookVerificationError, match="timestamp"):
        verified_message_id([SECRET], body, headers)


@pytest.mark.parametrize("offset", [timedelta(minutes=-4), timedelta(minutes=4)])
def test_webhook_timestamps_within_five_minutes_are_accepted(offset):
    body = b"{}"
    headers = webhook_headers(SECRET, body, message_id="m", at=datetime.now(UTC) + offset)
    assert verified_message_id([SECRET], body, headers) == "m"
