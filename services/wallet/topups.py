"""Top-ups: settled payments from `wallet.topups` and the payment webhook, claimed by payment id
(and booked once by the ledger's key for the payment)."""

from __future__ import annotations

from uuid import UUID

import asyncpg
from pydantic import TypeAdapter

from services.wallet import repository as repo
from services.wallet.domain import (
    UnknownWallet,
    Wallet,
    WalletError,
)
from services.wallet.events import Events
from services.wallet.flow import CONSUMER, WalletFlow
from shared.consumer import (
    REUSED_ID,
    Incoming,
    Records,
    dead_letter,
    dead_letters,
    parse_records,
    subject_digest,
)
from shared.contracts.base import deterministic_id
from shared.contracts.wallet import (
    TopUpWallet,
)
from shared.outbox import Outgoing

TOPUPS = TypeAdapter(TopUpWallet)


class PaymentReused(WalletError):
    """A payment id applied before, now with other content: not booked (a 409 by HTTP)."""


class TooOld(WalletError):
    """Dated before the inbox window: its claim may have been pruned, so whether it was
    applied before can no longer be told (a 422 by HTTP, a dead letter on Kafka)."""


def payment_claim_id(payment_id: str) -> UUID:
    return deterministic_id("wallet.payment", payment_id)


class TopUpFlow(WalletFlow):
    # --- wallet.topups and the payment webhook --------------------------------------------

    async def on_topups(self, records: Records) -> None:
        good, bad = parse_records(records, TOPUPS)
        letters = dead_letters(self.settings, CONSUMER, bad)
        try:
            await self._book_top_ups(good, letters)
        except asyncpg.UniqueViolationError as error:
            if error.constraint_name != repo.LEDGER_KEY:
                raise
            # A payment in the ledger whose claim is gone (pruned after the inbox window,
            # though the message is dated inside it): each top-up alone, that one refused,
            # so the batch is not retried for ever.
            await self._book_top_ups([], letters)
            for item in good:
                try:
                    await self._book_top_ups([item], [])
                except asyncpg.UniqueViolationError as again:
                    if again.constraint_name != repo.LEDGER_KEY:
                        raise
                    await self._book_top_ups([], [dead_letter(
                        self.settings, CONSUMER, item.record,
                        f"payment {item.message.payment_id} is in the ledger already; its "
                        "claim is older than the inbox window, so it is not booked again")])

    async def _book_top_ups(self, items: list[Incoming[TopUpWallet]],
                            letters: list[Outgoing]) -> None:
        events = Events(self.settings)
        events.out += letters
        async with self.pool.acquire() as conn, conn.transaction():
            wallets, results = await self._apply_top_ups(conn, items, events)
            # A refused top-up stays claimed: its replay would be refused again.
            events.out += [dead_letter(self.settings, CONSUMER, item.record, str(error))
                           for item, error, _ in results if error is not None]
            committed = await self._commit(conn, wallets, [], [], events)
        self.runtime.relay.push(committed)

    async def top_up(self, message: TopUpWallet) -> bool:
        """Apply a settled payment (from the webhook); False if it was applied before.
        A refusal raises and rolls back, claim included, so the gateway may try again; a
        payment applied before with another amount, wallet or source raises
        `PaymentReused`."""
        events = Events(self.settings)
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                wallets, [(_, error, applied)] = await self._apply_top_ups(
                    conn, [Incoming(None, message)], events)
                if error is not None:
                    raise error
                committed = await self._commit(conn, wallets, [], [], events)
        except asyncpg.UniqueViolationError as error:
            if error.constraint_name != repo.LEDGER_KEY:
                raise
            return False  # in the ledger already, its claim pruned: applied before
        self.runtime.relay.push(committed)
        return applied

    async def _apply_top_ups(self, conn: asyncpg.Connection, items: list[Incoming[TopUpWallet]],
                             events: Events
                             ) -> tuple[list[Wallet], list[tuple[Incoming[TopUpWallet],
                                                                 WalletError | None, bool]]]:
        """Claim the payments, lock their wallets and book each top-up: per item, the
        refusal (or None) and whether it was booked now (False: booked before)."""
        # by payment: a payment notified again (a new event, another time) is a repeat
        claimed, reused, old, wallets = await self._claim(
            conn, items, lambda m: payment_claim_id(m.payment_id), subject_digest)
        fresh = {id(i) for i in claimed}
        # by record (the webhook's one item has none: None is then that item)
        refused = {id(r.record) for r in reused}
        too_old = {id(r.record): r.reason for r in old}
        results: list[tuple[Incoming[TopUpWallet], WalletError | None, bool]] = []
        for item in items:
            m = item.message
            wallet = wallets.get(m.wallet_id)
            if id(item) not in fresh:
                error: WalletError | None = PaymentReused(
                    f"{REUSED_ID}: payment {m.payment_id} was applied with another amount, "
                    "currency, wallet or source") if id(item.record) in refused else None
                if id(item.record) in too_old:
                    error = TooOld(too_old[id(item.record)])
                results.append((item, error, False))
                continue
            try:
                if wallet is None:
                    raise UnknownWallet(f"unknown wallet {m.wallet_id}")
                wallet.top_up(payment_id=m.payment_id, amount=m.amount.amount_minor,
                              currency=m.amount.currency, at=m.occurred_at,
                              max_amount=self.settings.max_topup_minor)
            except WalletError as error:
                results.append((item, error, False))
                continue
            events.emit(wallet, m, wallet.take_facts())
            results.append((item, None, True))
        return list(wallets.values()), results
