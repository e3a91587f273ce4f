"""What every flow of provisioning shares: its runtime, its event-time clock, and the refusal
of messages older than the inbox window."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from services.provisioning import repository as repo
from services.provisioning.messages import Messages
from shared.consumer import Incoming, dead_letters
from shared.event_time import event_time_now
from shared.pricing import DEFAULT_BOOK, RateCardBook
from shared.runtime import ServiceRuntime

CONSUMER = "provisioning"


def wall_clock() -> datetime:
    return datetime.now(UTC)


class ProvisioningFlow:
    def __init__(self, runtime: ServiceRuntime, book: RateCardBook = DEFAULT_BOOK) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.book = book
        self.funds_timeout = timedelta(seconds=self.settings.hold_ttl_seconds)
        self.vcenter_timeout = timedelta(seconds=self.settings.vcenter_timeout_seconds)

    @property
    def pool(self) -> asyncpg.Pool:
        return self.runtime.pool

    async def now(self, conn: asyncpg.Connection) -> datetime:
        return event_time_now(await repo.clock_now(conn), wall_clock(), self.settings.event_clock)

    def _young_enough(self, items: Sequence[Incoming[Any]], clock: datetime | None,
                      messages: Messages) -> list[Incoming[Any]]:
        """Messages dated before the inbox window by `clock` (the batch's reading of the
        stored clock) are refused (dead letters naming why): their inbox rows may be pruned,
        so a repeat could no longer be told."""
        young, old = self.runtime.refuse_expired(items, clock)
        messages.out += dead_letters(self.settings, CONSUMER, old)
        return young
