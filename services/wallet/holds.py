"""Holds: a reservation asked for by provisioning is reserved or rejected, confirmed or released
by provisioning's outcome, and expired by the clock when no outcome came."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import uuid4

import asyncpg
from pydantic import TypeAdapter

from services.wallet import repository as repo
from services.wallet.domain import (
    Hold,
    HoldStatus,
    Rejected,
    Rejection,
    Wallet,
)
from services.wallet.events import Events
from services.wallet.flow import CONSUMER, WalletFlow
from shared.consumer import (
    Records,
    dead_letter,
    dead_letters,
    parse_records,
    subject_digest,
)
from shared.contracts.base import Envelope, deterministic_id
from shared.contracts.clock import ClockTick
from shared.contracts.wallet import (
    ProvisioningCancelled,
    ProvisioningFailed,
    ProvisioningOutcome,
    ProvisioningSucceeded,
    ReserveFunds,
    VmDecommissioned,
)

RESERVE = TypeAdapter(ReserveFunds)
OUTCOMES: TypeAdapter[Any] = TypeAdapter(ProvisioningOutcome)
TICKS = TypeAdapter(ClockTick)


class HoldFlow(WalletFlow):
    # --- provisioning.requests: reserve or reject ---------------------------------------

    async def on_reservation_requests(self, records: Records) -> None:
        good, bad = parse_records(records, RESERVE)
        events = Events(self.settings)
        events.out += dead_letters(self.settings, CONSUMER, bad)
        async with self.pool.acquire() as conn, conn.transaction():
            # by request: the same request sent again with a new envelope is a repeat
            fresh, reused, old, wallets = await self._claim(
                conn, good, lambda m: deterministic_id("reserve", m.request_id), subject_digest)
            events.out += dead_letters(self.settings, CONSUMER, reused + old)
            new_holds: list[Hold] = []
            for item in fresh:
                m = item.message
                wallet = wallets.get(m.wallet_id)
                if wallet is None:
                    events.reject(m.wallet_id, m.amount.currency, m, Rejected(
                        m.request_id, m.vm_id, Rejection.UNKNOWN_WALLET,
                        f"no wallet {m.wallet_id}", m.amount.amount_minor, None))
                    continue
                hold = wallet.reserve(
                    request_id=m.request_id, vm_id=m.vm_id, hold_id=uuid4(),
                    amount=m.amount.amount_minor, currency=m.amount.currency,
                    purpose=m.purpose, at=m.occurred_at, ttl=self.ttl)
                if hold is not None:
                    new_holds.append(hold)
                events.emit(wallet, m, wallet.take_facts())
            committed = await self._commit(conn, list(wallets.values()), new_holds, [], events)
        self.runtime.relay.push(committed)

    # --- provisioning.outcomes: confirm or release holds ---------------------------------

    async def on_provisioning_outcomes(self, records: Records) -> None:
        good, bad = parse_records(records, OUTCOMES)
        events = Events(self.settings)
        events.out += dead_letters(self.settings, CONSUMER, bad)
        async with self.pool.acquire() as conn, conn.transaction():
            fresh, reused, old, wallets = await self._claim(conn, good)
            events.out += dead_letters(self.settings, CONSUMER, reused + old)
            holds = await repo.open_holds_for_wallets(conn, list(wallets))
            by_request = {h.request_id: h for h in holds}
            # Whose hold each named request is: an outcome naming another wallet's request
            # (bad input) is dead-lettered, whether or not that wallet is in the batch.
            owners = {h.request_id: h.wallet_id for h in holds}
            owners.update(await repo.hold_owners(conn, list({
                i.message.request_id for i in fresh
                if not isinstance(i.message, VmDecommissioned)
                and i.message.request_id not in owners})))
            for item in fresh:
                m = item.message
                wallet = wallets.get(m.wallet_id)
                if wallet is None:
                    events.out.append(dead_letter(self.settings, CONSUMER, item.record,
                                                  f"unknown wallet {m.wallet_id}"))
                    continue
                owner = None if isinstance(m, VmDecommissioned) else owners.get(m.request_id)
                if owner is not None and owner != m.wallet_id:
                    events.out.append(dead_letter(
                        self.settings, CONSUMER, item.record,
                        f"request {m.request_id}'s hold belongs to wallet {owner}, "
                        f"not {m.wallet_id}"))
                    continue
                match m:
                    case ProvisioningSucceeded() if m.request_id in by_request:
                        wallet.confirm(by_request[m.request_id])
                    case ProvisioningFailed() | ProvisioningCancelled() \
                            if m.request_id in by_request:
                        wallet.release(by_request[m.request_id], m.occurred_at)
                    case VmDecommissioned():
                        for hold in holds:
                            if hold.vm_id == m.vm_id and hold.wallet_id == m.wallet_id:
                                wallet.release(hold, m.occurred_at)
                events.emit(wallet, m, wallet.take_facts())
            committed = await self._commit(conn, list(wallets.values()), [], holds, events)
        self.runtime.relay.push(committed)

    # --- clock.ticks: expire holds that got no outcome -----------------------------------

    async def on_clock_ticks(self, records: Records) -> None:
        good, bad = parse_records(records, TICKS)
        events = Events(self.settings)
        events.out += dead_letters(self.settings, CONSUMER, bad)
        async with self.pool.acquire() as conn, conn.transaction():
            wallets: list[Wallet] = []
            expired: list[Hold] = []
            if good:
                latest = max(good, key=lambda i: i.message.at).message
                await repo.advance_clock(conn, latest.at)
                wallets, expired = await self._expire_holds(conn, latest.at, latest, events)
            committed = await self._commit(conn, wallets, [], expired, events)
        self.runtime.relay.push(committed)

    async def _expire_holds(self, conn: asyncpg.Connection, now: datetime, cause: Envelope,
                            events: Events) -> tuple[list[Wallet], list[Hold]]:
        """Expire pending holds due by `now`: the wallets touched and the holds expired."""
        wallet_ids = await repo.expired_pending_wallets(conn, now)
        wallets = await repo.lock_wallets(conn, wallet_ids)
        holds = await repo.open_holds_for_wallets(conn, list(wallets))
        for hold in holds:
            wallet = wallets[hold.wallet_id]
            wallet.expire(hold, now)
            events.emit(wallet, cause, wallet.take_facts())
        return list(wallets.values()), [h for h in holds if h.status is HoldStatus.EXPIRED]
