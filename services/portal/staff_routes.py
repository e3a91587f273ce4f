"""Auto top-up settings, and the operator's wallet page: find an organisation, suspend and
resume its wallet."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Form, Request
from fastapi.responses import Response

from services.portal import domain
from services.portal.clients import ServiceError
from services.portal.routes import Checked, User

if TYPE_CHECKING:
    from services.portal.app import PortalService

HISTORY_DAYS = 90
ATTEMPTS_SHOWN = 20
WALLET_STATES = {"all": "all", "low_balance": "low balance", "depleted": "depleted",
                 "near_credit_limit": "near credit limit", "suspended": "suspended"}


def register_staff_routes(portal: PortalService, page: Callable[..., Any],
                          back: Callable[..., Response], status_of: Callable[..., Any],
                          client: Callable[..., Any]) -> None:
    app = portal.http

    @app.get("/topup")
    async def topup_page(request: Request, user: User) -> Response:
        if user.wallet_id is None:
            raise ServiceError(404, "an operator's key has no wallet of its own")
        status = await status_of(user)
        end = datetime.now(UTC) + timedelta(days=1)
        found, attempts = await asyncio.gather(
            client(user).statement(user.wallet_id, end - timedelta(days=HISTORY_DAYS), end),
            client(user).auto_topups(user.wallet_id, ATTEMPTS_SHOWN))
        topups = [e for e in domain.running_balance(found["opening_balance_minor"],
                                                    found["entries"]) if e.kind == "top_up"]
        return page(request, "topup.html", user, status=status, topups=topups[::-1],
                    attempts=attempts, currency=status["currency"],
                    history_days=HISTORY_DAYS)

    @app.post("/topup", dependencies=[Checked])
    async def set_topup(request: Request, user: User,
                        enabled: Annotated[str, Form()] = "",
                        threshold: Annotated[str, Form()] = "0",
                        amount: Annotated[str, Form()] = "0",
                        card_token: Annotated[str, Form()] = "") -> Response:
        if user.wallet_id is None:
            raise ServiceError(404, "an operator's key has no wallet of its own")
        try:
            body = {"enabled": bool(enabled),
                    "threshold_minor": domain.parse_amount(threshold) if enabled else 0,
                    "amount_minor": domain.parse_amount(amount) if enabled else 0,
                    "card_token": card_token.strip()}
        except domain.InvalidAmount as error:
            return back(request, "/topup", str(error), "error")
        try:
            await client(user).set_auto_topup(user.wallet_id, body)
        except ServiceError as error:
            return back(request, "/topup", f"Not saved: {error.detail}", "error")
        return back(request, "/topup", "Auto top-up is on." if enabled
                    else "Auto top-up is off.")

    @app.get("/customers")
    async def customers(request: Request, user: User) -> Response:
        """A reseller's customers with their balances and warnings."""
        if user.role != "reseller":
            raise ServiceError(403, "this page is for resellers")
        status = await status_of(user)
        found = await asyncio.gather(*(client(user).organisation_wallet(c)
                                       for c in user.customers))
        for wallet in found:
            wallet["warnings"] = domain.warnings(wallet)
            wallet["runway"] = domain.runway_text(wallet["runway_hours"],
                                                  wallet["burn_rate_per_hour_minor"])
        return page(request, "customers.html", user, status=status, customers=found)

    @app.get("/operator")
    async def operator(request: Request, user: User, organisation: str = "",
                       state: str = "all") -> Response:
        if user.role != "operator":
            raise ServiceError(403, "these pages are for the provider's operators")
        if state not in WALLET_STATES:
            state = "all"
        wallet = None
        entries: list[domain.StatementLine] = []
        listed = [] if organisation.strip() else await client(user).wallets(state)
        if organisation.strip():
            try:
                wallet = await client(user).organisation_wallet(
                    str(uuid.UUID(organisation.strip())))
            except ValueError:
                raise ServiceError(422, "an organisation id is a UUID") from None
            wallet["warnings"] = domain.warnings(wallet)
            wallet["runway"] = domain.runway_text(wallet["runway_hours"],
                                                  wallet["burn_rate_per_hour_minor"])
            end = datetime.now(UTC) + timedelta(days=1)
            found = await client(user).statement(wallet["wallet_id"],
                                                 end - timedelta(days=HISTORY_DAYS), end)
            entries = domain.running_balance(found["opening_balance_minor"], found["entries"])
        return page(request, "operator.html", user, status=None, wallet=wallet,
                    organisation=organisation.strip(), listed=listed, state=state,
                    states=WALLET_STATES, entries=entries[::-1], history_days=HISTORY_DAYS)

    @app.post("/operator/wallets/{wallet_id}/refunds", dependencies=[Checked])
    async def refund(request: Request, wallet_id: uuid.UUID, user: User,
                     organisation: Annotated[str, Form()], entry_id: Annotated[int, Form()],
                     amount: Annotated[str, Form()],
                     reason: Annotated[str, Form()] = "") -> Response:
        to = f"/operator?organisation={uuid.UUID(organisation)}"
        if not reason.strip():
            return back(request, to, "Say why: the reason is kept with the refund.", "error")
        try:
            amount_minor = domain.parse_amount(amount)
        except domain.InvalidAmount as error:
            return back(request, to, str(error), "error")
        try:
            await client(user).refund(str(wallet_id), {
                "refund_id": str(uuid.uuid4()), "charge_entry_id": entry_id,
                "amount_minor": amount_minor, "reason": reason.strip()})
        except ServiceError as error:
            return back(request, to, f"Refund refused: {error.detail}", "error")
        return back(request, to, f"Refunded {amount.strip()} on entry {entry_id}.")

    @app.post("/operator/wallets/{wallet_id}/status", dependencies=[Checked])
    async def change_status(request: Request, wallet_id: uuid.UUID, user: User,
                            organisation: Annotated[str, Form()],
                            status: Annotated[str, Form()],
                            reason: Annotated[str, Form()] = "") -> Response:
        to = f"/operator?organisation={uuid.UUID(organisation)}"
        if status not in ("active", "suspended"):
            return back(request, to, "A wallet is made active or suspended.", "error")
        if not reason.strip():
            return back(request, to, "Say why: the reason is kept with the change.", "error")
        try:
            await client(user).set_status(str(wallet_id), status, reason.strip())
        except ServiceError as error:
            return back(request, to, f"Not changed: {error.detail}", "error")
        return back(request, to, "Wallet suspended: new VMs are refused." if
                    status == "suspended" else "Wallet active again.")
