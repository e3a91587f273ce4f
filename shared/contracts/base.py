"""The envelope every message carries: identity, type, version, event time, lineage."""

from __future__ import annotations

import builtins
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Self
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

CONTRACTS_NAMESPACE = uuid5(NAMESPACE_URL, "urn:cloudwallet:contracts")


def deterministic_id(*parts: object) -> UUID:
    """An id derived from what a message is about, so a replay yields the same id."""
    return uuid5(CONTRACTS_NAMESPACE, "|".join(str(p) for p in parts))


def utcnow() -> datetime:
    return datetime.now(UTC)


def _in_utc(moment: datetime) -> datetime:
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:30+01:00 has no UTC time
        raise ValueError("time is outside the range of UTC times") from None


# Every time in a contract: with an offset, and as UTC once parsed, so a time that has no
# UTC equivalent is an invalid message (a dead letter), not an error in a handler.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_in_utc)]

# Event time runs ahead of the wall clock in a simulation (over a year in the demo) and
# behind it when old days are replayed, but an event further than this either way is a
# mistake: a VM event in the year 9999 would move metering's hours there for good, and a
# usage hour there would be billed into a month that never closes.
MAX_CLOCK_SKEW = timedelta(days=3653)


def _near_the_wall_clock(moment: datetime) -> datetime:
    if abs(moment - utcnow()) > MAX_CLOCK_SKEW:
        raise ValueError(f"event time must be within {MAX_CLOCK_SKEW.days} days of the wall "
                         "clock")
    return moment


# When something happened (a message's `occurred_at`, a usage hour): within MAX_CLOCK_SKEW.
EventTime = Annotated[AwareDatetime, AfterValidator(_in_utc),
                      AfterValidator(_near_the_wall_clock)]


def _storable(text: str) -> str:
    if "\x00" in text:
        raise ValueError("text must not contain NUL characters")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (a lone surrogate is not)") from None
    return text


# Text that is stored: PostgreSQL refuses NUL characters and lone surrogates, and a refusal
# there would fail a whole batch (and come again); here it is an invalid message or a 422.
StorableText = Annotated[str, AfterValidator(_storable)]


class Envelope(BaseModel):
    """Base of all events and commands.

    `event_id` is the idempotency key consumers deduplicate on. `occurred_at` is event
    time. `correlation_id` ties a whole saga together; `causation_id` names the message
    that caused this one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: UUID = Field(default_factory=uuid4)
    type: str
    version: int = 1
    occurred_at: EventTime = Field(default_factory=utcnow)
    correlation_id: UUID | None = None
    causation_id: UUID | None = None

    def caused(self, model: builtins.type[Self] | Any, **fields: Any) -> Any:
        """Build a message caused by this one, carrying the correlation forward. Unless told
        otherwise it happens, in event time, when its cause did (never at the wall clock's
        time: a simulated month stays in its month)."""
        fields.setdefault("occurred_at", self.occurred_at)
        fields.setdefault("correlation_id", self.correlation_id or self.event_id)
        fields.setdefault("causation_id", self.event_id)
        return model(**fields)
