"""Usage charges from billing: debits and correction credits, booked once by their ledger key
(no inbox: the ledger's unique key is the claim)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from pydantic import TypeAdapter

from services.wallet import repository as repo
from services.wallet.domain import (
    UsageParts,
    Wallet,
    holds_by_vm,
    ledger_key,
    usage_description,
)
from services.wallet.events import Events
from services.wallet.flow import CONSUMER, WalletFlow
from shared.consumer import (
    Incoming,
    Records,
    dead_letter,
    dead_letters,
    parse_records,
)
from shared.contracts.base import Envelope
from shared.contracts.wallet import (
    BillingCharge,
    ChargeUsage,
    ChargeWallet,
    CreditWallet,
    DebitsApplied,
    DebitWallet,
    UsageEntry,
)
from shared.money import MoneyModel
from shared.outbox import Outgoing, Queued
from shared.topics import WALLET_EVENTS

CHARGES: TypeAdapter[Any] = TypeAdapter(BillingCharge)


class ChargeFlow(WalletFlow):
    # --- billing.debits: usage debits and correction credits ------------------------------

    async def on_billing_charges(self, records: Records) -> None:
        """Book each charge once, by its ledger key; no inbox, as the ledger's unique key is
        the claim. A transaction first assumes every charge is new (the rule, and no extra
        read): a charge booked before, from a redelivery, breaks that key and rolls it back,
        and it runs again leaving out what is booked. A batch is booked in transactions of
        about `CHARGES_PER_TRANSACTION` charges, in order, so a record carrying thousands
        does not hold its wallets' locks (and the reservations waiting on them) for long."""
        good, bad = parse_records(records, CHARGES)
        letters = dead_letters(self.settings, CONSUMER, bad)
        for group in _by_charge_count(good, CHARGES_PER_TRANSACTION):
            try:
                committed = await self._book_charges(group, letters, skip_booked=False)
            except asyncpg.UniqueViolationError as error:
                if error.constraint_name != repo.LEDGER_KEY:
                    raise
                committed = await self._book_charges(group, letters, skip_booked=True)
            letters = []
            self.runtime.relay.push(committed)

    async def _book_charges(self, items: list[Incoming[Any]], letters: list[Outgoing], *,
                            skip_booked: bool) -> Queued:
        events = Events(self.settings)
        events.out += letters
        async with self.pool.acquire() as conn, conn.transaction():
            wallets = await repo.lock_wallets(conn, (i.message.wallet_id for i in items))
            # what each key booked (before, or earlier in the batch): a charge under a key
            # booked with another amount is not a redelivery (`charge_reuse`)
            planned = [(item, charges_of(item.message)) for item in items]
            booked = await repo.booked_charges(conn, [
                (i.message.wallet_id, c.key) for i, charges in planned for c in charges
            ]) if skip_booked else {}
            holds = await repo.open_holds_for_wallets(conn, list(wallets))
            by_vm = holds_by_vm(holds)  # each wallet draws only its own (Wallet._draw)
            applied: dict[UUID, tuple[list[UUID], list[UUID], int, int, Envelope]] = {}
            for item, charges in planned:
                m = item.message
                wallet = wallets.get(m.wallet_id)
                reason = charge_refusal(m, wallet)
                if reason is not None or wallet is None:
                    events.out.append(dead_letter(self.settings, CONSUMER, item.record,
                                                  reason or "unknown wallet"))
                    continue
                reuse = charge_reuse(m, charges, wallet.wallet_id, booked)
                if reuse is not None:
                    events.out.append(dead_letter(self.settings, CONSUMER, item.record, reuse))
                    continue
                debits, credits, debited, credited, _ = applied.get(
                    wallet.wallet_id, ([], [], 0, 0, m))
                for c in charges:
                    if (wallet.wallet_id, c.key) in booked:
                        continue
                    # once, if the batch repeats it
                    booked[(wallet.wallet_id, c.key)] = (c.amount, c.description)
                    if c.kind == "debit":
                        wallet.debit_usage(amount=c.amount, key=c.key, at=c.at, vm_id=c.vm_id,
                                           holds=by_vm, description=c.description,
                                           parts=c.parts)
                        debits.append(c.charge_id)
                        debited += c.amount
                    else:
                        wallet.credit_usage(amount=c.amount, key=c.key, at=c.at, vm_id=c.vm_id,
                                            description=c.description, parts=c.parts)
                        credits.append(c.charge_id)
                        credited += c.amount
                applied[wallet.wallet_id] = (debits, credits, debited, credited, m)
                events.emit(wallet, m, wallet.take_facts())
            for wallet_id, (debits, credits, debited, credited, last) in applied.items():
                if not (debits or credits):
                    continue
                w = wallets[wallet_id]
                events.send(WALLET_EVENTS.name, wallet_id, last, DebitsApplied,
                             wallet_id=wallet_id, debit_ids=debits, credit_ids=credits,
                             debited=MoneyModel(amount_minor=debited, currency=w.currency),
                             credited=MoneyModel(amount_minor=credited, currency=w.currency),
                             balance_after=MoneyModel(amount_minor=w.balance, currency=w.currency))
            return await self._commit(conn, list(wallets.values()), [], holds, events)


USAGE_DESCRIPTIONS = {"debit": "usage", "credit": "usage correction"}

# Charges booked per transaction, at most one message more (a message holds up to 2,000).
CHARGES_PER_TRANSACTION = 2_000


def _by_charge_count(items: list[Incoming[Any]], limit: int) -> list[list[Incoming[Any]]]:
    """Consecutive groups of whole messages, each closed once it holds `limit` charges;
    at least one group, so a batch of dead letters alone is still written."""
    groups: list[list[Incoming[Any]]] = [[]]
    count = 0
    for item in items:
        if count >= limit:
            groups.append([])
            count = 0
        groups[-1].append(item)
        m = item.message
        count += len(m.charges) if isinstance(m, ChargeWallet) \
            else len(m.entries) if isinstance(m, ChargeUsage) else 1
    return groups


@dataclass(frozen=True, slots=True)
class Charge:
    """One debit or credit, whichever message carried it."""

    kind: str  # "debit" or "credit"
    charge_id: UUID
    amount: int
    vm_id: UUID | None
    at: datetime
    description: str
    key: str  # the ledger's idempotency key, `ledger_key(kind, charge_id)`
    parts: UsageParts | None = None  # a usage entry's VMs


def charges_of(m: Any) -> list[Charge]:
    match m:
        case ChargeUsage():
            return [Charge(e.kind, e.entry_id, e.amount_minor, None, e.hour_start,
                           usage_description(e.kind, e.hour_start, e.revision, len(e.vm_ids),
                                             e.amount_minor, m.currency),
                           usage_entry_key(e),
                           UsageParts(e.vm_ids, e.line_ids, e.vm_amounts)) for e in m.entries]
        case ChargeWallet():
            return [Charge(c.kind, c.line_id, c.amount_minor, c.vm_id, c.period_start,
                           c.description or USAGE_DESCRIPTIONS[c.kind],
                           ledger_key(c.kind, c.line_id)) for c in m.charges]
        case DebitWallet():
            return [Charge("debit", m.debit_id, m.amount.amount_minor, m.vm_id,
                           m.period_start or m.occurred_at, m.description,
                           ledger_key("debit", m.debit_id))]
        case _:
            assert isinstance(m, CreditWallet)
            return [Charge("credit", m.credit_id, m.amount.amount_minor, m.vm_id,
                           m.occurred_at, m.description, ledger_key("credit", m.credit_id))]


def usage_entry_key(entry: UsageEntry) -> str:
    """A usage entry's ledger key. A line billed before billing sent entries became an entry
    of its own under its line id (billing_0003), and the wallet may have booked it already,
    per line: sent again as an entry, it keeps that key, so it is not booked twice."""
    if entry.line_ids == [entry.entry_id]:
        return ledger_key(entry.kind, entry.entry_id)
    return ledger_key("usage", entry.entry_id)


def charge_reuse(m: Any, charges: Sequence[Charge], wallet_id: UUID,
                 booked: dict[tuple[UUID, str], tuple[int, str]]) -> str | None:
    """Why a charge message is not a redelivery although a key of it is booked (it goes to
    the dead letters, none of its charges booked), or None: a key booked with another
    amount, or (a debit or credit message, whose description is the caller's) another
    description. A usage entry's description is not compared: an entry sent for a line
    booked per line before entries existed keeps its key under another description."""
    compare_description = isinstance(m, DebitWallet | CreditWallet)
    for c in charges:
        prior = booked.get((wallet_id, c.key))
        if prior is None:
            continue
        amount, description = prior
        if amount != c.amount:
            return (f"charge key reused with other content: {c.key} was booked for {amount}, "
                    f"not {c.amount}")
        if compare_description and description != c.description:
            return (f"charge key reused with other content: {c.key} was booked with another "
                    "description")
    return None


def charge_refusal(m: Any, wallet: Wallet | None) -> str | None:
    """Why a charge message cannot be booked at all (it goes to the dead letters), or None."""
    if wallet is None:
        return f"unknown wallet {m.wallet_id}"
    currency = m.currency if isinstance(m, ChargeWallet | ChargeUsage) else m.amount.currency
    if currency != wallet.currency:
        return f"charge is in {currency}, wallet is in {wallet.currency}"
    if isinstance(m, DebitWallet | CreditWallet) and m.amount.amount_minor <= 0:
        return "charge amount must be positive"
    return None
