"""Signed-in users. The API key stays on the server: the browser's cookie (signed, HttpOnly,
SameSite=Lax, by starlette's SessionMiddleware) holds only a random session id and the
session's CSRF token. Sessions live in this process's memory, so a restart signs everyone
out, which is the safe failure."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SignedIn:
    token: str
    role: str
    organisation_id: str | None
    wallet_id: str | None
    key_id: str
    customers: list[str]
    expires_at: float
    # VM requests asked for in this session, newest first: the VMs page follows them until
    # they end (the services list VMs, not requests).
    requests: list[str] = field(default_factory=list)


class SessionStore:
    def __init__(self, lifetime_s: float = 8 * 3600) -> None:
        self._lifetime = lifetime_s
        self._sessions: dict[str, SignedIn] = {}

    def open(self, token: str, me: dict[str, Any]) -> str:
        self._forget_expired()
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = SignedIn(
            token=token, role=me["role"], organisation_id=me.get("organisation_id"),
            wallet_id=me.get("wallet_id"), key_id=me["key_id"],
            customers=list(me.get("customers") or []),
            expires_at=time.monotonic() + self._lifetime)
        return session_id

    def get(self, session_id: str | None) -> SignedIn | None:
        if session_id is None:
            return None
        found = self._sessions.get(session_id)
        if found is None or found.expires_at <= time.monotonic():
            self._sessions.pop(session_id, None)
            return None
        return found

    def close(self, session_id: str | None) -> None:
        if session_id is not None:
            self._sessions.pop(session_id, None)

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for session_id in [s for s, v in self._sessions.items() if v.expires_at <= now]:
            del self._sessions[session_id]


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(expected: str | None, sent: str | None) -> bool:
    return bool(expected) and bool(sent) and secrets.compare_digest(str(expected), str(sent))
