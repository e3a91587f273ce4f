"""The wallet's HTTP API for the portal and the payment gateway (FastAPI).

Errors are 4xx with a `detail` that says why. Mutations take the wallet's row lock and
write their events to the outbox in the same transaction as the ledger.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Literal
from uuid import UUID, uuid4

import asyncpg
from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
from services.wallet.handlers import Events
from shared.consumer import validation_problems
from shared.contracts.base import StorableText, UtcDatetime
from shared.contracts.wallet import TopUpWallet, WalletOpened
from shared.event_time import event_time_now
from shared.money import BIGINT_MAX, MAX_AMOUNT_MINOR, CurrencyCode, Money, MoneyModel
from shared.outbox import enqueue, outgoing
from shared.topics import WALLET_EVENTS

if TYPE_CHECKING:
    from services.wallet.app import WalletService

SIGNATURE_HEADER = "X-Signature"


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


class PaymentWebhook(BaseModel):
    model_config = ConfigDict(extra="ignore")

    payment_id: StorableText = Field(min_length=1, max_length=100)
    wallet_id: UUID
    amount_minor: int = Field(gt=0, le=MAX_AMOUNT_MINOR)
    currency: CurrencyCode = "ZAR"
    status: Literal["succeeded", "failed"]
    occurred_at: UtcDatetime | None = None


class RefundRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Required: a retried POST must name the same refund, or it would be a second one.
    refund_id: UUID
    charge_entry_id: int = Field(ge=1, le=BIGINT_MAX)
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


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _status(wallet: Wallet, usage_24h: int) -> WalletStatus:
    burn = burn_rate(usage_24h, wallet.available)
    return WalletStatus(
        wallet_id=wallet.wallet_id, organisation_id=wallet.organisation_id,
        currency=wallet.currency, billing_mode=wallet.billing_mode,
        status="suspended" if wallet.suspended else "active",
        balance_minor=wallet.balance, held_minor=wallet.held, available_minor=wallet.available,
        credit_limit_minor=wallet.credit_limit, low_balance=wallet.low_balance,
        depleted=wallet.depleted, low_balance_threshold_minor=wallet.effective_low_threshold,
        burn_rate_per_hour_minor=burn.per_hour, runway_hours=burn.runway_hours,
        balance=Money(wallet.balance, wallet.currency).format(),
        available=Money(wallet.available, wallet.currency).format(),
    )


def register_routes(service: WalletService) -> None:
    router = APIRouter(tags=["wallet"])
    settings = service.settings

    async def locked_wallet(conn: asyncpg.Connection, wallet_id: UUID) -> Wallet:
        wallet = (await repo.lock_wallets(conn, [wallet_id])).get(wallet_id)
        if wallet is None:
            raise HTTPException(404, f"no wallet {wallet_id}")
        return wallet

    async def now(conn: asyncpg.Connection) -> datetime:
        """Event time of an HTTP call: see shared/event_time.py."""
        return event_time_now(await repo.clock_now(conn), datetime.now(UTC), settings.event_clock)

    async def pooled_now() -> datetime:
        async with service.pool.acquire() as conn:
            return await now(conn)

    @router.post("/organisations", status_code=201)
    async def open_wallet(body: OpenWallet) -> dict[str, UUID]:
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
    async def wallet_status(wallet_id: UUID) -> WalletStatus:
        """Balance, held and available funds, low-balance flag, burn rate and runway."""
        async with service.pool.acquire() as conn:
            wallet = await repo.get_wallet(conn, wallet_id)
            if wallet is None:
                raise HTTPException(404, f"no wallet {wallet_id}")
            # Event time, not the wall clock: simulated months report their own burn rate.
            usage = await repo.usage_last_24h(conn, wallet_id)
        return _status(wallet, usage)

    @router.get("/organisations/{organisation_id}/wallet")
    async def organisation_wallet(organisation_id: UUID) -> WalletStatus:
        async with service.pool.acquire() as conn:
            wallet_id = await repo.wallet_of_organisation(conn, organisation_id)
        if wallet_id is None:
            raise HTTPException(404, f"no organisation {organisation_id}")
        return await wallet_status(wallet_id)

    @router.get("/wallets/{wallet_id}/statement")
    async def statement(wallet_id: UUID, start: Annotated[UtcDatetime, Query(alias="from")],
                        end: Annotated[UtcDatetime, Query(alias="to")],
                        format: Literal["json", "csv"] = "json") -> Response:
        """Opening balance, entries and closing balance for [from, to) (times with an offset,
        e.g. 2026-01-01T00:00:00Z)."""
        if end <= start:
            raise HTTPException(422, "to must be after from")
        async with service.pool.acquire() as conn:
            wallet = await repo.get_wallet(conn, wallet_id)
            if wallet is None:
                raise HTTPException(404, f"no wallet {wallet_id}")
            opening = await repo.balance_before(conn, wallet_id, start)
            rows = await repo.entries_between(conn, wallet_id, start, end)
        closing = opening + sum(r["amount"] for r in rows)
        entries = [{
            "entry_id": r["entry_id"], "occurred_at": r["occurred_at"].isoformat(),
            "kind": r["kind"], "amount_minor": r["amount"], "description": r["description"],
            "vm_id": str(r["vm_id"]) if r["vm_id"] else None,
            "refunds_entry_id": r["refunds_entry_id"],
        } for r in rows]
        if format == "csv":
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow(["entry_id", "occurred_at", "kind", "description", "vm_id",
                             "amount_minor", "currency"])
            writer.writerow(["", start.isoformat(), "opening_balance", "", "", opening,
                             wallet.currency])
            for e in entries:
                writer.writerow([e["entry_id"], e["occurred_at"], e["kind"], e["description"],
                                 e["vm_id"] or "", e["amount_minor"], wallet.currency])
            writer.writerow(["", end.isoformat(), "closing_balance", "", "", closing,
                             wallet.currency])
            return Response(buffer.getvalue(), media_type="text/csv")
        return Response(
            content=json.dumps({"wallet_id": str(wallet_id), "currency": wallet.currency,
                           "from": start.isoformat(), "to": end.isoformat(),
                           "opening_balance_minor": opening, "closing_balance_minor": closing,
                           "entries": entries}),
            media_type="application/json")

    @router.post("/webhooks/payments")
    async def payment_webhook(
        request: Request,
        signature: Annotated[str | None, Header(alias=SIGNATURE_HEADER)] = None,
    ) -> dict[str, object]:
        """Top-up from the payment gateway, signed with HMAC-SHA256 over the raw body."""
        body = await request.body()
        if signature is None or not hmac.compare_digest(
                signature, sign(settings.payment_webhook_secret, body)):
            raise HTTPException(401, "missing or invalid payment signature")
        try:
            payment = PaymentWebhook.model_validate_json(body)
        except ValidationError as error:
            problems = validation_problems(error, whole="body", limit=3)
            raise HTTPException(422, f"invalid payment notification: {problems}") from None
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
        except WalletError as error:
            raise HTTPException(422, str(error)) from None
        service.relay.notify()
        return {"applied": applied, "payment_id": payment.payment_id}

    @router.post("/wallets/{wallet_id}/refunds", status_code=201)
    async def refund(wallet_id: UUID, body: RefundRequest) -> dict[str, object]:
        """Refund part of a charge: at most 95% of it, counting earlier refunds."""
        async with service.pool.acquire() as conn, conn.transaction():
            events = Events(settings, at=await now(conn))
            wallet = await locked_wallet(conn, wallet_id)
            booked = await repo.booked_entry(conn, wallet_id, ledger_key("refund", body.refund_id))
            if booked is not None:
                if (booked["amount"], booked["refunds_entry_id"]) != (body.amount_minor,
                                                                      body.charge_entry_id):
                    raise HTTPException(409, f"refund {body.refund_id} was already booked "
                                             f"for {booked['amount']} of entry "
                                             f"{booked['refunds_entry_id']}")
                return {"refund_id": body.refund_id, "applied": False,
                        "entry_id": booked["entry_id"]}
            charge = await repo.refundable_charge(conn, wallet_id, body.charge_entry_id)
            if charge is None:
                raise HTTPException(404, f"no entry {body.charge_entry_id} in wallet {wallet_id}")
            try:
                wallet.refund(refund_id=body.refund_id, charge_entry_id=body.charge_entry_id,
                              charge_amount=charge.amount, already_refunded=charge.refunded,
                              amount=body.amount_minor, at=await now(conn), reason=body.reason,
                              still_charged=charge.hour_still_charged,
                              hour_refunded=charge.hour_refunded or 0)
            except WalletError as error:
                raise HTTPException(422, str(error)) from None
            events.emit(wallet, None, wallet.take_facts())
            (entry_id,) = await repo.insert_entries(conn, wallet.entries)
            await repo.save_wallets(conn, [wallet])
            await enqueue(conn, repo.SCHEMA, events.out)
        service.relay.notify()
        return {"refund_id": body.refund_id, "applied": True, "entry_id": entry_id,
                "balance_minor": wallet.balance}

    @router.put("/wallets/{wallet_id}/auto-topup")
    async def auto_topup(wallet_id: UUID, body: AutoTopUpRequest) -> dict[str, object]:
        """PAYG wallets only: top up `amount` when available funds fall below `threshold`."""
        async with service.pool.acquire() as conn, conn.transaction():
            events = Events(settings, at=await now(conn))
            wallet = await locked_wallet(conn, wallet_id)
            if not body.enabled:
                wallet.set_auto_topup(None)
                await repo.set_auto_topup(conn, wallet_id, None)
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
            events.emit(wallet, None, wallet.take_facts())  # a low balance now: top up
            await repo.save_wallets(conn, [wallet])
            await enqueue(conn, repo.SCHEMA, events.out)
        service.relay.notify()
        return {"wallet_id": wallet_id, "enabled": True, "threshold_minor": body.threshold_minor,
                "amount_minor": body.amount_minor}

    @router.put("/wallets/{wallet_id}/status")
    async def change_status(wallet_id: UUID, body: StatusChange) -> dict[str, object]:
        """An operator suspends a wallet (no new reservations) or makes it active again.
        Usage keeps being booked while suspended: it happened."""
        async with service.pool.acquire() as conn, conn.transaction():
            await locked_wallet(conn, wallet_id)
            await repo.set_status(conn, wallet_id, body.status == "suspended")
        return {"wallet_id": wallet_id, "status": body.status}

    @router.get("/wallets/{wallet_id}/reconciliation")
    async def reconciliation(wallet_id: UUID) -> dict[str, object]:
        """balance == sum(ledger) and held == sum(open holds), checked live."""
        async with service.pool.acquire() as conn:
            totals = await repo.reconciliation(conn, wallet_id)
        if totals is None:
            raise HTTPException(404, f"no wallet {wallet_id}")
        balance, ledger, held, holds = totals
        return {"wallet_id": wallet_id, "balance_minor": balance, "ledger_sum_minor": ledger,
                "held_minor": held, "open_holds_minor": holds,
                "consistent": ledger == balance and holds == held}

    service.http.include_router(router)

