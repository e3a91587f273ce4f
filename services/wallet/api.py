"""The wallet's HTTP API for the portal and the payment gateway (FastAPI).

Every route but the payment webhook (signed by the gateway instead) needs an API key; a
wallet the caller's key may not see is a 404, exactly like one that does not exist. Errors
are problem documents whose `detail` says why. Mutations take the wallet's row lock and
write their events to the outbox, and the key that asked to the wallet's key actions, in the
same transaction as the ledger.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Literal
from uuid import UUID, uuid4

import asyncpg
from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.wallet import audit
from services.wallet import repository as repo
from services.wallet.domain import (
    AutoTopUp,
    BillingMode,
    UnknownWallet,
    Wallet,
    WalletError,
    burn_rate,
    ledger_key,
)
from services.wallet.events import Events
from services.wallet.topups import PaymentReused
from shared.api_keys import register_organisation
from shared.consumer import content_digest, validation_problems
from shared.contracts.base import StorableText, UtcDatetime
from shared.contracts.wallet import TopUpWallet, WalletOpened
from shared.event_time import event_time_now
from shared.http import ActorKey, OperatorKey, ReaderKey
from shared.money import BIGINT_MAX, MAX_AMOUNT_MINOR, CurrencyCode, Money, MoneyModel
from shared.outbox import enqueue, outgoing
from shared.topics import WALLET_EVENTS
from shared.webhooks import WebhookVerificationError, verified_message_id

if TYPE_CHECKING:
    from services.wallet.app import WalletService


class OpenWallet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    organisation_id: UUID = Field(default_factory=uuid4)
    name: StorableText = Field(min_length=1, max_length=200)
    kind: Literal["customer", "reseller"] = "customer"
    reseller_id: UUID | None = None
    billing_mode: BillingMode = BillingMode.PAYG
    currency: CurrencyCode = "ZAR"
    credit_limit_minor: int = Field(default=0, ge=0, le=MAX_AMOUNT_MINOR)
    low_balance_threshold_minor: int | None = Field(default=None, ge=0, le=MAX_AMOUNT_MINOR)


class WalletStatus(BaseModel):
    wallet_id: UUID
    organisation_id: UUID
    # Pages show it instead of the id; none for a seeded wallet without its organisation.
    organisation_name: str | None = None
    currency: str
    billing_mode: BillingMode
    status: Literal["active", "suspended"]
    balance_minor: int
    held_minor: int
    available_minor: int
    credit_limit_minor: int
    low_balance: bool
    depleted: bool
    low_balance_threshold_minor: int
    burn_rate_per_hour_minor: int
    runway_hours: float | None
    balance: str
    available: str
    # Auto top-up, when on (the card token stays with the wallet).
    auto_topup_threshold_minor: int | None = None
    auto_topup_amount_minor: int | None = None


class PaymentWebhook(BaseModel):
    model_config = ConfigDict(extra="ignore")

    payment_id: StorableText = Field(min_length=1, max_length=100)
    wallet_id: UUID
    amount_minor: int = Field(gt=0, le=MAX_AMOUNT_MINOR)
    currency: CurrencyCode = "ZAR"
    status: Literal["succeeded", "failed"]
    occurred_at: UtcDatetime | None = None


# The webhook reads its raw body (the signature covers its exact bytes), so its document
# names the body and the Standard Webhooks headers itself.
WEBHOOK_OPENAPI = {
    "parameters": [{"in": "header", "name": name, "required": True, "schema": {"type": "string"},
                    "description": text} for name, text in (
        ("webhook-id", "The message id; a repeated one is answered without effect"),
        ("webhook-timestamp", "Seconds since the epoch; refused beyond 5 minutes from now"),
        ("webhook-signature", "v1,<base64 HMAC-SHA256 of id.timestamp.body>, space separated"))],
    "requestBody": {"required": True, "content": {
        "application/json": {"schema": PaymentWebhook.model_json_schema()}}},
}


class RefundRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Required: a retried POST must name the same refund, or it would be a second one.
    refund_id: UUID
    charge_entry_id: int = Field(ge=1, le=BIGINT_MAX)
    # A VM within a usage entry: refund (part of) that VM's share of it.
    vm_id: UUID | None = None
    amount_minor: int = Field(gt=0, le=MAX_AMOUNT_MINOR)
    reason: StorableText = Field(default="", max_length=200)


class StatusChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["active", "suspended"]
    reason: StorableText = Field(default="", max_length=200)


class AutoTopUpRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool
    threshold_minor: int = Field(default=0, ge=0, le=MAX_AMOUNT_MINOR)
    amount_minor: int = Field(default=0, ge=0, le=MAX_AMOUNT_MINOR)
    card_token: StorableText = Field(default="", max_length=100)


def _status(wallet: Wallet, usage_24h: int, name: str | None) -> WalletStatus:
    burn = burn_rate(usage_24h, wallet.available)
    return WalletStatus(
        wallet_id=wallet.wallet_id, organisation_id=wallet.organisation_id,
        organisation_name=name,
        currency=wallet.currency, billing_mode=wallet.billing_mode,
        status="suspended" if wallet.suspended else "active",
        balance_minor=wallet.balance, held_minor=wallet.held, available_minor=wallet.available,
        credit_limit_minor=wallet.credit_limit, low_balance=wallet.low_balance,
        depleted=wallet.depleted, low_balance_threshold_minor=wallet.effective_low_threshold,
        burn_rate_per_hour_minor=burn.per_hour, runway_hours=burn.runway_hours,
        balance=Money(wallet.balance, wallet.currency).format(),
        available=Money(wallet.available, wallet.currency).format(),
        auto_topup_threshold_minor=wallet.auto_topup.threshold if wallet.auto_topup else None,
        auto_topup_amount_minor=wallet.auto_topup.amount if wallet.auto_topup else None,
    )


def register_routes(service: WalletService) -> None:
    router = APIRouter(tags=["wallet"])
    settings = service.settings

    def no_wallet(wallet_id: UUID) -> HTTPException:
        return HTTPException(404, f"no wallet {wallet_id}")

    async def locked_wallet(conn: asyncpg.Connection, wallet_id: UUID,
                            visible: bool = True) -> Wallet:
        wallet = (await repo.lock_wallets(conn, [wallet_id])).get(wallet_id)
        if wallet is None or not visible:
            raise no_wallet(wallet_id)
        return wallet

    async def now(conn: asyncpg.Connection) -> datetime:
        """Event time of an HTTP call: see shared/event_time.py."""
        return event_time_now(await repo.clock_now(conn), datetime.now(UTC), settings.event_clock)

    async def pooled_now() -> datetime:
        async with service.pool.acquire() as conn:
            return await now(conn)

    @router.post("/organisations", status_code=201)
    async def open_wallet(body: OpenWallet, by: OperatorKey) -> dict[str, UUID]:
        """Open an organisation (customer or reseller) with its one wallet."""
        if body.billing_mode is BillingMode.PAYG and body.credit_limit_minor:
            raise HTTPException(422, "a PAYG wallet cannot have a credit limit")
        wallet = Wallet(uuid4(), body.organisation_id, body.currency, body.billing_mode,
                        credit_limit=body.credit_limit_minor,
                        low_balance_threshold=settings.low_balance_threshold_minor
                        if body.low_balance_threshold_minor is None
                        else body.low_balance_threshold_minor)
        async with service.pool.acquire() as conn, conn.transaction():
            if body.reseller_id is not None and \
                    await repo.organisation_kind(conn, body.reseller_id) != "reseller":
                raise HTTPException(422, f"{body.reseller_id} is not a reseller organisation")
            exists = HTTPException(409, f"organisation {body.organisation_id} already exists")
            if await repo.organisation_kind(conn, body.organisation_id) is not None:
                raise exists
            try:
                await repo.create_organisation_wallet(
                    conn, organisation_id=body.organisation_id, name=body.name, kind=body.kind,
                    reseller_id=body.reseller_id, wallet=wallet)
            except asyncpg.UniqueViolationError:  # opened at the same moment by another call
                raise exists from None
            await register_organisation(conn, body.organisation_id, body.reseller_id)
            await audit.record(conn, by, wallet.wallet_id, "opened")
            opened = WalletOpened(
                occurred_at=await now(conn), wallet_id=wallet.wallet_id,
                organisation_id=body.organisation_id,
                organisation_name=body.name, organisation_kind=body.kind,
                reseller_id=body.reseller_id, currency=wallet.currency,
                billing_mode=wallet.billing_mode.value)
            await enqueue(conn, repo.SCHEMA, [
                outgoing(settings.topic(WALLET_EVENTS.name), wallet.wallet_id, opened)])
        service.relay.notify()
        return {"organisation_id": body.organisation_id, "wallet_id": wallet.wallet_id}

    @router.get("/wallets/{wallet_id}")
    async def wallet_status(wallet_id: UUID, by: ReaderKey) -> WalletStatus:
        """Balance, held and available funds, low-balance flag, burn rate and runway."""
        async with service.pool.acquire() as conn:
            wallet = await repo.get_wallet(conn, wallet_id)
            if wallet is None or not by.may_read(wallet.organisation_id):
                raise no_wallet(wallet_id)
            # Event time, not the wall clock: simulated months report their own burn rate.
            usage = await repo.usage_last_24h(conn, wallet_id)
            name = await repo.organisation_name(conn, wallet.organisation_id)
        return _status(wallet, usage, name)

    @router.get("/wallets")
    async def wallets(by: OperatorKey,
                      state: Literal["all", "low_balance", "depleted", "near_credit_limit",
                                     "suspended"] = "all",
                      limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[dict[str, object]]:
        """Operators: organisations' wallets by name, narrowed to low balance, depleted,
        invoice customers at 80% or more of their credit limit, or suspended."""
        async with service.pool.acquire() as conn:
            found = await repo.list_wallets(conn, state, limit)
        return [{"organisation_id": w.organisation_id, "wallet_id": w.wallet_id, "name": name,
                 "kind": kind, "currency": w.currency, "billing_mode": w.billing_mode.value,
                 "status": "suspended" if w.suspended else "active",
                 "balance_minor": w.balance, "held_minor": w.held,
                 "available_minor": w.available, "credit_limit_minor": w.credit_limit,
                 "low_balance": w.low_balance, "depleted": w.depleted}
                for name, kind, w in found]

    @router.get("/me")
    async def me(by: ReaderKey) -> dict[str, object]:
        """Who the key is: its role, its organisation and that organisation's wallet (none
        for an operator), and the customers a reseller may read. A portal asks this once,
        at sign-in."""
        wallet_id = None
        if by.organisation_id is not None:
            async with service.pool.acquire() as conn:
                wallet_id = await repo.wallet_of_organisation(conn, by.organisation_id)
        return {"key_id": by.key_id, "role": by.role.value,
                "organisation_id": by.organisation_id, "wallet_id": wallet_id,
                "customers": sorted(str(c) for c in by.customers)}

    @router.get("/organisations/{organisation_id}/wallet")
    async def organisation_wallet(organisation_id: UUID, by: ReaderKey) -> WalletStatus:
        async with service.pool.acquire() as conn:
            wallet_id = await repo.wallet_of_organisation(conn, organisation_id)
        if wallet_id is None or not by.may_read(organisation_id):
            raise HTTPException(404, f"no organisation {organisation_id}")
        return await wallet_status(wallet_id, by)

    @router.get("/wallets/{wallet_id}/statement")
    async def statement(wallet_id: UUID, start: Annotated[UtcDatetime, Query(alias="from")],
                        end: Annotated[UtcDatetime, Query(alias="to")], by: ReaderKey,
                        format: Literal["json", "csv"] = "json",
                        detail: Literal["vm"] | None = None) -> Response:
        """Opening balance, entries and closing balance for [from, to) (times with an offset,
        e.g. 2026-01-01T00:00:00Z). Usage is one entry per wallet and hour (a correction, per
        hour and revision); `detail=vm` lists under each the billing lines it covers, per VM."""
        if end <= start:
            raise HTTPException(422, "to must be after from")
        async with service.pool.acquire() as conn:
            wallet = await repo.get_wallet(conn, wallet_id)
            if wallet is None or not by.may_read(wallet.organisation_id):
                raise no_wallet(wallet_id)
            opening = await repo.balance_before(conn, wallet_id, start)
            rows = await repo.entries_between(conn, wallet_id, start, end)
            actions = await audit.between(conn, wallet_id, start, end)
            keys = await audit.keys_of_entries(conn, [r["entry_id"] for r in rows])
        closing = opening + sum(r["amount"] for r in rows)
        entries = [statement_entry(r, detail == "vm", keys.get(r["entry_id"])) for r in rows]
        if format == "csv":
            return Response(statement_csv(entries, wallet.currency, start, end, opening,
                                          closing), media_type="text/csv")
        return Response(
            content=json.dumps({"wallet_id": str(wallet_id), "currency": wallet.currency,
                           "from": start.isoformat(), "to": end.isoformat(),
                           "opening_balance_minor": opening, "closing_balance_minor": closing,
                           "entries": entries, "key_actions": actions}),
            media_type="application/json")

    @router.post("/webhooks/payments", responses={
        401: {"description": "No valid signature, or a timestamp over 5 minutes away"},
        409: {"description": "The webhook-id or the payment id was applied before with "
                             "another notification (amount, wallet, currency...)"}},
        openapi_extra=WEBHOOK_OPENAPI)
    async def payment_webhook(request: Request) -> dict[str, object]:
        """Top-up from the payment gateway, signed the Standard Webhooks way (webhook-id,
        webhook-timestamp, webhook-signature over the raw body); no API key. A message id
        seen before is answered without effect; seen with another notification, or a payment
        applied before with another amount or wallet, is refused (409)."""
        body = await request.body()
        try:
            message_id = verified_message_id(
                [settings.payment_webhook_secret, settings.payment_webhook_previous_secret],
                body, request.headers)
        except WebhookVerificationError:
            raise HTTPException(401, "missing or invalid payment signature, or a timestamp "
                                     "more than 5 minutes from now") from None
        if not 1 <= len(message_id) <= 200:
            raise HTTPException(400, "webhook-id must be 1 to 200 characters")
        try:
            payment = PaymentWebhook.model_validate_json(body)
        except ValidationError as error:
            problems = validation_problems(error, whole="body", limit=3)
            raise HTTPException(422, f"invalid payment notification: {problems}") from None
        digest = content_digest(payment)  # parsed: the gateway's extra fields do not count
        async with service.pool.acquire() as conn:
            seen = await audit.webhook_message(conn, message_id)
        if seen is not None:
            seen_payment, seen_digest = seen
            if seen_digest is not None and seen_digest != digest:
                raise HTTPException(409, "webhook-id reused with other content: this message "
                                         "was applied with another notification")
            return {"applied": False, "duplicate_message": True, "payment_id": seen_payment}
        if payment.status != "succeeded":
            return {"applied": False, "reason": "payment did not succeed"}
        message = TopUpWallet(
            payment_id=payment.payment_id, wallet_id=payment.wallet_id,
            amount=MoneyModel(amount_minor=payment.amount_minor, currency=payment.currency),
            source="gateway_webhook", occurred_at=payment.occurred_at or await pooled_now())
        try:
            applied = await service.handlers.top_up(message)
        except UnknownWallet as error:
            raise HTTPException(404, str(error)) from None
        except PaymentReused as error:
            raise HTTPException(409, str(error)) from None
        except WalletError as error:
            raise HTTPException(422, str(error)) from None
        # After the top-up (idempotent by its payment id): a crash in between only lets the
        # message be applied, without effect, once more.
        async with service.pool.acquire() as conn:
            await audit.record_webhook_message(conn, message_id, payment.payment_id, digest)
        service.relay.notify()
        return {"applied": applied, "payment_id": payment.payment_id}

    @router.post("/wallets/{wallet_id}/refunds", status_code=201)
    async def refund(wallet_id: UUID, body: RefundRequest, by: OperatorKey) -> dict[str, object]:
        """Refund part of a charge, or of one VM's part of a usage entry (`vm_id`): at most
        95% of what it still costs after its corrections, counting earlier refunds."""
        async with service.pool.acquire() as conn, conn.transaction():
            events = Events(settings, at=await now(conn))
            wallet = await locked_wallet(conn, wallet_id)
            booked = await repo.booked_entry(conn, wallet_id, ledger_key("refund", body.refund_id))
            if booked is not None:
                if (booked["amount"], booked["refunds_entry_id"]) != (body.amount_minor,
                                                                      body.charge_entry_id) \
                        or body.vm_id not in (None, booked["vm_id"]):
                    vm = f" (vm {booked['vm_id']})" if booked["vm_id"] else ""
                    raise HTTPException(409, f"refund {body.refund_id} was already booked "
                                             f"for {booked['amount']} of entry "
                                             f"{booked['refunds_entry_id']}{vm}")
                return {"refund_id": body.refund_id, "applied": False,
                        "entry_id": booked["entry_id"]}
            charge = await repo.refundable(conn, wallet_id, body.charge_entry_id)
            if charge is None:
                raise HTTPException(404, f"no entry {body.charge_entry_id} in wallet {wallet_id}")
            try:
                wallet.refund(refund_id=body.refund_id, charge=charge, amount=body.amount_minor,
                              at=await now(conn), reason=body.reason, vm_id=body.vm_id)
            except WalletError as error:
                raise HTTPException(422, str(error)) from None
            events.emit(wallet, None, wallet.take_facts())
            (entry_id,) = await repo.insert_entries(conn, wallet.entries)
            await audit.record(conn, by, wallet_id, "refund", entry_id=entry_id,
                               detail=body.reason)
            await repo.save_wallets(conn, [wallet])
            await enqueue(conn, repo.SCHEMA, events.out)
        service.relay.notify()
        return {"refund_id": body.refund_id, "applied": True, "entry_id": entry_id,
                "balance_minor": wallet.balance}

    @router.put("/wallets/{wallet_id}/auto-topup")
    async def auto_topup(wallet_id: UUID, body: AutoTopUpRequest, by: ActorKey
                         ) -> dict[str, object]:
        """PAYG wallets only: top up `amount` when available funds fall below `threshold`."""
        async with service.pool.acquire() as conn, conn.transaction():
            events = Events(settings, at=await now(conn))
            owner = await repo.get_wallet(conn, wallet_id)
            wallet = await locked_wallet(
                conn, wallet_id, owner is not None and by.may_act_for(owner.organisation_id))
            if not body.enabled:
                wallet.set_auto_topup(None)
                await repo.set_auto_topup(conn, wallet_id, None)
                await audit.record(conn, by, wallet_id, "auto_topup_off")
                return {"wallet_id": wallet_id, "enabled": False}
            if wallet.billing_mode is not BillingMode.PAYG:
                raise HTTPException(422, "auto top-up is for PAYG wallets")
            if body.amount_minor <= 0 or body.amount_minor > settings.max_topup_minor:
                raise HTTPException(422, "auto top-up amount must be positive and within limits")
            if not body.card_token:
                raise HTTPException(422, "auto top-up needs a card token")
            auto = AutoTopUp(body.threshold_minor, body.amount_minor, body.card_token)
            wallet.set_auto_topup(auto)
            await repo.set_auto_topup(conn, wallet_id, auto)
            await audit.record(conn, by, wallet_id, "auto_topup_on",
                               detail=f"below {body.threshold_minor} add {body.amount_minor}")
            events.emit(wallet, None, wallet.take_facts())  # a low balance now: top up
            await repo.save_wallets(conn, [wallet])
            await enqueue(conn, repo.SCHEMA, events.out)
        service.relay.notify()
        return {"wallet_id": wallet_id, "enabled": True, "threshold_minor": body.threshold_minor,
                "amount_minor": body.amount_minor}

    @router.put("/wallets/{wallet_id}/status")
    async def change_status(wallet_id: UUID, body: StatusChange, by: OperatorKey
                            ) -> dict[str, object]:
        """An operator suspends a wallet (no new reservations) or makes it active again.
        Usage keeps being booked while suspended: it happened."""
        async with service.pool.acquire() as conn, conn.transaction():
            await locked_wallet(conn, wallet_id)
            await repo.set_status(conn, wallet_id, body.status == "suspended")
            await audit.record(conn, by, wallet_id,
                               "suspended" if body.status == "suspended" else "resumed",
                               detail=body.reason)
        return {"wallet_id": wallet_id, "status": body.status}

    @router.get("/wallets/{wallet_id}/reconciliation")
    async def reconciliation(wallet_id: UUID, by: ReaderKey) -> dict[str, object]:
        """balance == sum(ledger) and held == sum(open holds), checked live."""
        async with service.pool.acquire() as conn:
            owner = await repo.get_wallet(conn, wallet_id)
            totals = await repo.reconciliation(conn, wallet_id)
        if totals is None or owner is None or not by.may_read(owner.organisation_id):
            raise no_wallet(wallet_id)
        balance, ledger, held, holds = totals
        return {"wallet_id": wallet_id, "balance_minor": balance, "ledger_sum_minor": ledger,
                "held_minor": held, "open_holds_minor": holds,
                "consistent": ledger == balance and holds == held}

    service.http.include_router(router)


STATEMENT_CSV_COLUMNS = ["record", "entry_id", "occurred_at", "kind", "description", "vm_count",
                         "vm_id", "line_id", "amount_minor", "currency"]


def statement_entry(row: asyncpg.Record, with_vms: bool,
                    key_id: str | None = None) -> dict[str, object]:
    """A ledger row as the statement shows it; with its VM parts (signed as the entry) when
    asked. A row booked per billing line is its one VM's part (its line id is in its key)."""
    sign = -1 if row["amount"] < 0 else 1
    if row["vm_ids"] is not None:
        parts = [(str(v), str(line), sign * amount) for v, line, amount in zip(
            row["vm_ids"], row["line_ids"], row["vm_amounts"], strict=True)]
    elif row["vm_id"] is not None and row["kind"] in ("usage_debit", "usage_credit"):
        parts = [(str(row["vm_id"]), row["idempotency_key"].partition(":")[2], row["amount"])]
    else:
        parts = []
    entry: dict[str, object] = {
        "entry_id": row["entry_id"], "occurred_at": row["occurred_at"].isoformat(),
        "kind": row["kind"], "amount_minor": row["amount"], "description": row["description"],
        "vm_id": str(row["vm_id"]) if row["vm_id"] else None, "vm_count": len(parts),
        "refunds_entry_id": row["refunds_entry_id"], "key_id": key_id,
    }
    if with_vms:
        entry["vms"] = [{"vm_id": vm, "line_id": line, "amount_minor": amount}
                        for vm, line, amount in parts]
    return entry


def statement_csv(entries: list[dict[str, object]], currency: str, start: datetime,
                  end: datetime, opening: int, closing: int) -> str:
    """One `entry` row per ledger row between two `balance` rows; under a usage entry, with
    `detail=vm`, one `vm` row per VM (its part of the entry above: not summed again)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(STATEMENT_CSV_COLUMNS)
    writer.writerow(["balance", "", start.isoformat(), "opening_balance", "", "", "", "",
                     opening, currency])
    for e in entries:
        writer.writerow(["entry", e["entry_id"], e["occurred_at"], e["kind"], e["description"],
                         e["vm_count"], e["vm_id"] or "", "", e["amount_minor"], currency])
        for vm in e.get("vms", ()):  # type: ignore[attr-defined]
            writer.writerow(["vm", e["entry_id"], e["occurred_at"], e["kind"], "", "",
                             vm["vm_id"], vm["line_id"], vm["amount_minor"], currency])
    writer.writerow(["balance", "", end.isoformat(), "closing_balance", "", "", "", "", closing,
                     currency])
    return buffer.getvalue()
