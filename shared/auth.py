"""API keys and roles: who may call what, and for which organisation. Pure: no I/O.

A key is `cw_<key id>_<secret>`: the key id (public, 12 hex characters) finds the stored
row, the secret (32 random bytes) proves possession. Only SHA-256 of the whole key is
stored. A slow password hash (argon2, bcrypt) protects guessable passwords; a 256-bit random
secret cannot be guessed, and a slow hash would cost tens of milliseconds of CPU on every
request. The stored hash is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from uuid import UUID

KEY_PREFIX = "cw"
_KEY_PATTERN = re.compile(r"^cw_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


class Role(StrEnum):
    # The portal acting for one organisation.
    ORGANISATION = "organisation"
    # A reseller's portal: its own organisation, and reading its customers'.
    RESELLER = "reseller"
    # The provider's staff: opens organisations, suspends and resumes, refunds, reads all.
    OPERATOR = "operator"
    # Machines (vCenter hooks, metrics scrapers): only the endpoints made for them.
    INTEGRATION = "integration"


ORGANISATION_ROLES = frozenset({Role.ORGANISATION, Role.RESELLER})
# Who may call an endpoint that reads an organisation's data (ownership checked after).
READERS = (Role.ORGANISATION, Role.RESELLER, Role.OPERATOR)
# Who may act for their own organisation: ask for VMs, resize, delete, set auto top-up.
ACTORS = (Role.ORGANISATION, Role.RESELLER)
OPERATORS = (Role.OPERATOR,)
# Machine endpoints: metrics, the vCenter simulator's configuration.
MACHINES = (Role.OPERATOR, Role.INTEGRATION)


class InvalidKey(ValueError):
    """Not a key, an unknown one, a revoked or an expired one: the caller learns only that
    it is not accepted."""


@dataclass(frozen=True)
class NewKey:
    key_id: str
    token: str  # shown once, never stored

    @property
    def secret_hash(self) -> bytes:
        return hash_token(self.token)


def generate_key() -> NewKey:
    key_id = secrets.token_hex(6)
    return NewKey(key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}")


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def key_id_of(token: str) -> str:
    match = _KEY_PATTERN.match(token)
    if match is None:
        raise InvalidKey("not a cloudwallet API key")
    return match.group(1)


@dataclass(frozen=True)
class StoredKey:
    key_id: str
    secret_hash: bytes
    role: Role
    organisation_id: UUID | None
    expires_at: datetime | None
    revoked_at: datetime | None
    # A reseller's customers, read with the key.
    customers: frozenset[UUID] = frozenset()


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    key_id: str
    role: Role
    organisation_id: UUID | None = None
    customers: frozenset[UUID] = field(default_factory=frozenset)

    def may_read(self, organisation_id: UUID) -> bool:
        """Whether this caller may see the organisation's wallet, statements, VMs and
        requests."""
        if self.role is Role.OPERATOR:
            return True
        if self.role in ORGANISATION_ROLES:
            return organisation_id == self.organisation_id or organisation_id in self.customers
        return False

    def may_act_for(self, organisation_id: UUID) -> bool:
        """Whether this caller may spend the organisation's money (VMs, auto top-up)."""
        return self.role in ORGANISATION_ROLES and organisation_id == self.organisation_id


def verify(token: str, stored: StoredKey | None, now: datetime) -> Principal:
    if stored is None or not hmac.compare_digest(hash_token(token), stored.secret_hash):
        raise InvalidKey("unknown API key")
    if stored.revoked_at is not None:
        raise InvalidKey("API key revoked")
    if stored.expires_at is not None and stored.expires_at <= now:
        raise InvalidKey("API key expired")
    return Principal(stored.key_id, stored.role, stored.organisation_id, stored.customers)


def check_key_request(role: Role, organisation_id: UUID | None) -> None:
    """An organisation or reseller key names its organisation; other keys name none."""
    if (role in ORGANISATION_ROLES) != (organisation_id is not None):
        raise ValueError(f"a {role.value} key " + ("needs an organisation"
                                                   if role in ORGANISATION_ROLES
                                                   else "cannot name an organisation"))


@dataclass
class TokenBucket:
    """`rate` requests a second on average, bursts up to `burst`. Time is the caller's
    monotonic clock, passed in."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """0 when the request may go ahead, else how many seconds until one may."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate
