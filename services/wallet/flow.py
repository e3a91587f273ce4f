"""What every flow of the wallet shares: its runtime, the batch's commit (ledger rows, holds,
wallets and outbox together) and the inbox claim with the wallets' locks, in one round trip."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any
from uuid import UUID

import asyncpg

from services.wallet import repository as repo
from services.wallet.domain import (
    Hold,
    Wallet,
)
from services.wallet.events import Events
from shared import consumer
from shared.consumer import (
    Incoming,
    content_digest,
    judge_claims,
)
from shared.outbox import Queued
from shared.runtime import ServiceRuntime

CONSUMER = "wallet"


class WalletFlow:
    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.ttl = timedelta(seconds=self.settings.hold_ttl_seconds)

    @property
    def pool(self) -> asyncpg.Pool:
        return self.runtime.pool

    async def _commit(self, conn: asyncpg.Connection, wallets: Sequence[Wallet],
                      new_holds: Sequence[Hold], changed_holds: Sequence[Hold],
                      events: Events) -> Queued:
        """Write the batch; returns its outbox rows, to push to the relay once committed."""
        await repo.append_entries(conn, [e for w in wallets for e in w.entries])
        return await repo.save_batch(conn, wallets, new_holds, changed_holds, events.out)

    async def _claim(self, conn: asyncpg.Connection, items: Sequence[Incoming[Any]],
                     id_of: Callable[[Any], UUID] = lambda m: m.event_id,
                     digest_of: Callable[[Any], bytes] = content_digest
                     ) -> tuple[list[Incoming[Any]], list[consumer.Rejected],
                                list[consumer.Rejected], dict[UUID, Wallet]]:
        """The batch's messages not seen before; those whose id was seen with other content
        (`REUSED_ID`) and those dated before the inbox window (whose claims may be pruned,
        shared/retention.py), for dead letters; and its wallets locked. One round trip: the
        claim returns the clock the window is measured by, so a message too old is claimed
        too (its row changes nothing: it is refused by its date whenever it comes)."""
        ids = [id_of(i.message) for i in items]
        digests = [digest_of(i.message) for i in items]
        fresh, stored, clock, wallets = await repo.claim_and_lock(
            conn, ids, digests, (i.message.wallet_id for i in items))
        young, old = self.runtime.refuse_expired(items, clock)
        judged = {id(i) for i in young}
        claims = [(x, d) for i, x, d in zip(items, ids, digests, strict=True) if id(i) in judged]
        kept, reused = judge_claims(young, [x for x, _ in claims], [d for _, d in claims],
                                    fresh, stored)
        return kept, reused, old, wallets
