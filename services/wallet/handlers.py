"""Thin handlers: Kafka batches and HTTP commands in, domain calls, facts out as events.

Each batch runs in one transaction: inbox claim (idempotency; for charges, the ledger's own
unique key), row locks on the wallets it touches, the domain decisions, then the writes and
the outgoing events (outbox) together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from pydantic import TypeAdapter

from services.wallet import repository as repo
from services.wallet.domain import (
    Depleted,
    FundsRestored,
    Hold,
    HoldStatus,
    LowBalance,
    Refunded,
    Rejected,
    Rejection,
    Reserved,
    ToppedUp,
    UnknownWallet,
    UsageParts,
    Wallet,
    WalletError,
    WalletFact,
    holds_by_vm,
    ledger_key,
    usage_description,
)
from shared import consumer
from shared.consumer import (
    REUSED_ID,
    Incoming,
    Records,
    content_digest,
    dead_letter,
    dead_letters,
    judge_claims,
    parse_records,
    subject_digest,
)
from shared.contracts.base import Envelope, deterministic_id
from shared.contracts.clock import ClockTick
from shared.contracts.wallet import (
    AutoTopUpSettings,
    BillingCharge,
    ChargeUsage,
    ChargeWallet,
    CreditWallet,
    DebitsApplied,
    DebitWallet,
    FundsRejected,
    FundsReserved,
    ProvisioningCancelled,
    ProvisioningFailed,
    ProvisioningOutcome,
    ProvisioningSucceeded,
    RejectionReason,
    ReserveFunds,
    TopUpWallet,
    UsageEntry,
    VmDecommissioned,
    WalletDepleted,
    WalletFundsRestored,
    WalletLowBalance,
    WalletRefunded,
    WalletToppedUp,
)
from shared.money import MoneyModel
from shared.outbox import Outgoing, Queued, outgoing
from shared.runtime import ServiceRuntime
from shared.settings import Settings
from shared.topics import WALLET_DECISIONS, WALLET_EVENTS

CONSUMER = "wallet"

RESERVE = TypeAdapter(ReserveFunds)
OUTCOMES: TypeAdapter[Any] = TypeAdapter(ProvisioningOutcome)
CHARGES: TypeAdapter[Any] = TypeAdapter(BillingCharge)
TOPUPS = TypeAdapter(TopUpWallet)
TICKS = TypeAdapter(ClockTick)


class PaymentReused(WalletError):
    """A payment id applied before, now with other content: not booked (a 409 by HTTP)."""


class TooOld(WalletError):
    """Dated before the inbox window: its claim may have been pruned, so whether it was
    applied before can no longer be told (a 422 by HTTP, a dead letter on Kafka)."""


def payment_claim_id(payment_id: str) -> UUID:
    return deterministic_id("wallet.payment", payment_id)


class Events:
    """Turns the wallet's facts into contract events, caused by the message at hand."""

    def __init__(self, settings: Settings, at: datetime | None = None) -> None:
        self.settings = settings
        self.at = at  # when an event with no cause (an HTTP call) happened; None: now
        self.out: list[Outgoing] = []

    def _money(self, wallet: Wallet, amount: int) -> MoneyModel:
        return MoneyModel(amount_minor=amount, currency=wallet.currency)

    def emit(self, wallet: Wallet, cause: Envelope | None, facts: Sequence[WalletFact]) -> None:
        for fact in facts:
            self._emit_one(wallet, cause, fact)

    def send(self, topic: str, key: UUID, cause: Envelope | None, model: type[Envelope],
              **fields: Any) -> None:
        if cause is None and self.at is not None:
            fields.setdefault("occurred_at", self.at)
        message = cause.caused(model, **fields) if cause else model(**fields)
        self.out.append(outgoing(self.settings.topic(topic), key, message))

    def _emit_one(self, w: Wallet, cause: Envelope | None, fact: WalletFact) -> None:
        events, decisions = WALLET_EVENTS.name, WALLET_DECISIONS.name
        common = {"wallet_id": w.wallet_id}
        match fact:
            case Reserved(hold=hold, available_after=available):
                self.send(decisions, w.wallet_id, cause, FundsReserved, **common,
                           request_id=hold.request_id, vm_id=hold.vm_id, hold_id=hold.hold_id,
                           amount=self._money(w, hold.amount),
                           available_after=self._money(w, available), expires_at=hold.expires_at)
            case Rejected():
                self.reject(w.wallet_id, w.currency, cause, fact)
            case LowBalance(available=available, threshold=threshold):
                auto = None
                if w.auto_topup is not None:
                    auto = AutoTopUpSettings(threshold=self._money(w, w.auto_topup.threshold),
                                             amount=self._money(w, w.auto_topup.amount),
                                             card_token=w.auto_topup.card_token)
                self.send(events, w.wallet_id, cause, WalletLowBalance, **common,
                           organisation_id=w.organisation_id, billing_mode=w.billing_mode.value,
                           available=self._money(w, available),
                           threshold=self._money(w, threshold), auto_topup=auto)
            case Depleted(available=available):
                self.send(events, w.wallet_id, cause, WalletDepleted, **common,
                           organisation_id=w.organisation_id, billing_mode=w.billing_mode.value,
                           available=self._money(w, available))
            case FundsRestored(available=available):
                self.send(events, w.wallet_id, cause, WalletFundsRestored, **common,
                           organisation_id=w.organisation_id, available=self._money(w, available))
            case ToppedUp(payment_id=payment_id, amount=amount, balance_after=balance):
                self.send(events, w.wallet_id, cause, WalletToppedUp, **common,
                           payment_id=payment_id, amount=self._money(w, amount),
                           balance_after=self._money(w, balance))
            case Refunded(refund_id=refund_id, charge_entry_id=entry, amount=amount,
                          balance_after=balance, vm_id=vm_id):
                self.send(events, w.wallet_id, cause, WalletRefunded, **common,
                           refund_id=refund_id, charge_entry_id=entry, vm_id=vm_id,
                           amount=self._money(w, amount), balance_after=self._money(w, balance))

    def reject(self, wallet_id: UUID, currency: str, cause: Envelope | None,
               fact: Rejected) -> None:
        self.send(WALLET_DECISIONS.name, wallet_id, cause, FundsRejected, wallet_id=wallet_id,
                   request_id=fact.request_id, vm_id=fact.vm_id,
                   reason=RejectionReason(fact.reason.value), detail=fact.detail,
                   required=MoneyModel(amount_minor=max(fact.required, 0), currency=currency),
                   available=None if fact.available is None
                   else MoneyModel(amount_minor=fact.available, currency=currency))


class WalletHandlers:
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
        shared/retention.py), for dead letters; and its wallets locked."""
        young, old = self.runtime.refuse_expired(items, await repo.clock_now(conn))
        ids = [id_of(i.message) for i in young]
        digests = [digest_of(i.message) for i in young]
        fresh, stored, wallets = await repo.claim_and_lock(
            conn, ids, digests, (i.message.wallet_id for i in young))
        kept, reused = judge_claims(young, ids, digests, fresh, stored)
        return kept, reused, old, wallets

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
            booked = await repo.booked_charges(conn, [
                (i.message.wallet_id, c.key) for i in items for c in charges_of(i.message)
            ]) if skip_booked else {}
            holds = await repo.open_holds_for_wallets(conn, list(wallets))
            by_vm = holds_by_vm(holds)  # each wallet draws only its own (Wallet._draw)
            applied: dict[UUID, tuple[list[UUID], list[UUID], int, int, Envelope]] = {}
            for item in items:
                m = item.message
                wallet = wallets.get(m.wallet_id)
                reason = charge_refusal(m, wallet)
                if reason is not None or wallet is None:
                    events.out.append(dead_letter(self.settings, CONSUMER, item.record,
                                                  reason or "unknown wallet"))
                    continue
                charges = charges_of(m)
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
