"""The payment gateway's webhook, signed the Standard Webhooks way (as Stripe and Svix do):
HMAC-SHA256 over `<message id>.<timestamp>.<raw body>`, sent in the `webhook-id`,
`webhook-timestamp` and `webhook-signature` headers. A timestamp more than five minutes
from now, either way, is refused. Secrets are `whsec_<base64>`; two may be valid at once
(the current and the previous one), so a secret is rotated without downtime."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from uuid import uuid4

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

__all__ = ["WebhookVerificationError", "verified_message_id", "webhook_headers"]


def webhook_headers(secret: str, body: bytes, message_id: str | None = None,
                    at: datetime | None = None) -> dict[str, str]:
    """What the gateway sends with `body` (the demo, the benchmarks and tests sign with
    this)."""
    at = at or datetime.now(UTC)
    message_id = message_id or f"msg_{uuid4().hex}"
    return {"webhook-id": message_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret).sign(message_id, at, body)}


def verified_message_id(secrets: Iterable[str], body: bytes,
                        headers: Mapping[str, str]) -> str:
    """The message id, if one of `secrets` signed this body with these headers within the
    tolerance; WebhookVerificationError otherwise."""
    wanted = {k: headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")
              if k in headers}
    for secret in secrets:
        if not secret:
            continue
        try:
            Webhook(secret).verify(body, wanted, json_parse=False)
        except WebhookVerificationError as error:
            if "timestamp" in str(error).lower() or "headers" in str(error).lower():
                raise  # the same for every secret
            continue
        return wanted["webhook-id"]
    raise WebhookVerificationError("No matching signature found")
