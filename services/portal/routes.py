"""The portal's pages. Each handler reads the signed-in session, asks the services with the
user's key, and renders a template; every form posts a CSRF token checked here."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from services.portal import domain
from services.portal.clients import ServiceError, UserClient
from services.portal.sessions import SignedIn, csrf_matches, new_csrf_token

if TYPE_CHECKING:
    from services.portal.app import PortalService

TIERS = ("small", "medium", "large", "enterprise")
PENDING = ("awaiting_funds", "awaiting_vcenter")


class SignInRequired(Exception):
    pass


def signed_in(request: Request) -> SignedIn:
    """The signed-in user of this request, or off to the sign-in page."""
    user = request.app.state.portal.sessions.get(request.session.get("sid"))
    if user is None:
        raise SignInRequired
    return user


async def checked_form(request: Request) -> None:
    """Every form's POST: the CSRF token in the form must be the session's."""
    form = await request.form()
    sent = form.get("csrf")
    if not csrf_matches(request.session.get("csrf"), sent if isinstance(sent, str) else None):
        raise HTTPException(403, "the form's security token is missing or stale; "
                                 "reload the page and try again")


# Route parameters (module level, so FastAPI resolves them from string annotations).
User = Annotated[SignedIn, Depends(signed_in)]
Checked = Depends(checked_form)


def register_routes(portal: PortalService) -> None:
    from services.portal.app import HERE

    app = portal.http
    app.state.portal = portal
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals.update(money=domain.money, kind_name=domain.kind_name)

    @app.exception_handler(SignInRequired)
    async def to_sign_in(request: Request, _: SignInRequired) -> Response:
        return RedirectResponse("/signin", status_code=303)

    def csrf_token(request: Request) -> str:
        token = request.session.get("csrf")
        if not token:
            token = request.session["csrf"] = new_csrf_token()
        return str(token)

    def client(user: SignedIn) -> UserClient:
        return portal.services.as_user(user.token)

    async def status_of(user: SignedIn) -> dict[str, Any] | None:
        if user.wallet_id is None:
            return None
        status = await client(user).wallet(user.wallet_id)
        status["warnings"] = domain.warnings(status)
        status["runway"] = domain.runway_text(status["runway_hours"],
                                              status["burn_rate_per_hour_minor"])
        return status

    def page(request: Request, name: str, user: SignedIn | None, **context: Any
             ) -> HTMLResponse:
        flash = request.session.pop("flash", None)
        return templates.TemplateResponse(request, name, {
            "user": user, "csrf": csrf_token(request), "flash": flash, **context})

    def back(request: Request, to: str, message: str, level: str = "ok") -> Response:
        request.session["flash"] = {"level": level, "text": message}
        return RedirectResponse(to, status_code=303)

    @app.exception_handler(ServiceError)
    async def service_refused(request: Request, error: ServiceError) -> Response:
        if error.status == 401:
            portal.sessions.close(request.session.pop("sid", None))
            return RedirectResponse("/signin", status_code=303)
        user = portal.sessions.get(request.session.get("sid"))
        return page(request, "error.html", user, status=None, detail=error.detail,
                    code=error.status)

    @app.get("/", include_in_schema=False)
    async def home(request: Request) -> Response:
        user = portal.sessions.get(request.session.get("sid"))
        if user is None:
            return RedirectResponse("/signin", status_code=303)
        return RedirectResponse("/statement" if user.wallet_id else "/operator",
                                status_code=303)

    @app.get("/signin")
    async def signin_page(request: Request) -> HTMLResponse:
        return page(request, "signin.html", None, error=None, status=None)

    @app.post("/signin", dependencies=[Checked])
    async def signin(request: Request, api_key: Annotated[str, Form()]) -> Response:
        token = api_key.strip()
        try:
            me = await portal.services.as_user(token).me()
        except ServiceError as error:
            reason = ("That API key is not valid: unknown, revoked or expired."
                      if error.status in (401, 403) else error.detail)
            response = page(request, "signin.html", None, error=reason, status=None)
            response.status_code = 401 if error.status in (401, 403) else error.status
            return response
        portal.sessions.close(request.session.get("sid"))
        request.session.clear()
        request.session["sid"] = portal.sessions.open(token, me)
        return RedirectResponse("/", status_code=303)

    @app.post("/signout", dependencies=[Checked])
    async def signout(request: Request) -> Response:
        portal.sessions.close(request.session.get("sid"))
        request.session.clear()
        return RedirectResponse("/signin", status_code=303)

    # statement

    def statement_period(month: str | None, start: str | None, end: str | None
                         ) -> domain.Period:
        try:
            return domain.period_of(month, start, end, datetime.now(UTC).date())
        except domain.InvalidPeriod as error:
            raise ServiceError(422, str(error)) from None

    @app.get("/statement")
    async def statement(request: Request, user: User, month: str | None = None,
                        start: Annotated[str | None, Query(alias="from")] = None,
                        end: Annotated[str | None, Query(alias="to")] = None) -> Response:
        if user.wallet_id is None:
            return RedirectResponse("/operator", status_code=303)
        period = statement_period(month, start, end)
        status, found = await asyncio.gather(
            status_of(user), client(user).statement(user.wallet_id, period.start, period.end))
        lines = domain.running_balance(found["opening_balance_minor"], found["entries"])
        month_label = f"{period.start:%Y-%m}"
        closed = invoice = None
        if month or not (start or end):
            closed, invoice = await asyncio.gather(
                client(user).monthly_statement(user.wallet_id, month_label),
                _optional_invoice(client(user), user.wallet_id, month_label))
        query = (f"month={month_label}" if month or not (start or end)
                 else f"from={start or end}&to={end or start}")
        return page(request, "statement.html", user, status=status, period=period,
                    statement=found, lines=lines, currency=found["currency"], query=query,
                    month=month_label, start=start or "", end=end or "", closed=closed,
                    invoice=invoice)

    async def _optional_invoice(user: UserClient, wallet_id: str, month: str) -> Any:
        try:
            return await user.invoice(wallet_id, month)
        except ServiceError as error:
            if error.status in (404, 409, 422):
                return None
            raise

    @app.get("/statement.csv")
    async def statement_csv(user: User, month: str | None = None,
                            start: Annotated[str | None, Query(alias="from")] = None,
                            end: Annotated[str | None, Query(alias="to")] = None) -> Response:
        if user.wallet_id is None:
            raise ServiceError(404, "an operator's key has no wallet of its own")
        period = statement_period(month, start, end)
        text = await client(user).statement(user.wallet_id, period.start, period.end,
                                            csv=True)
        name = f"statement-{period.start:%Y-%m-%d}-{period.end:%Y-%m-%d}.csv"
        return Response(text, media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/invoice/{month}.csv")
    async def invoice_csv(month: str, user: User) -> Response:
        if user.wallet_id is None:
            raise ServiceError(404, "an operator's key has no wallet of its own")
        domain.month_period(month)
        text = await client(user).invoice(user.wallet_id, month, csv=True)
        return Response(text, media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="invoice-{month}.csv"'})

    # VMs

    async def tracked_requests(user: SignedIn) -> list[dict[str, Any]]:
        found = await asyncio.gather(*(client(user).vm_request(r) for r in user.requests),
                                     return_exceptions=True)
        return [r for r in found if isinstance(r, dict)]

    @app.get("/vms")
    async def vms(request: Request, user: User) -> Response:
        if user.organisation_id is None or user.wallet_id is None:
            return RedirectResponse("/operator", status_code=303)
        status, listed, requests = await asyncio.gather(
            status_of(user), client(user).vms(user.organisation_id), tracked_requests(user))
        return page(request, "vms.html", user, status=status, vms=listed, requests=requests,
                    tiers=TIERS, pending=PENDING)

    async def priced(user: SignedIn, tier: str, vm_id: uuid.UUID | None
                     ) -> tuple[dict[str, Any], dict[str, Any], int]:
        """The tier's quote, the wallet's status, and what asking for it would hold: the
        first month for a new VM, the monthly increase for a resize of `vm_id`."""
        assert user.organisation_id is not None and user.wallet_id is not None
        you = client(user)
        if vm_id is None:
            quote, status = await asyncio.gather(
                you.estimate(user.organisation_id, {"tier": tier}), you.wallet(user.wallet_id))
            return quote, status, quote["monthly_minor"]
        vm = await you.vm(str(vm_id))
        spec = vm["spec"]
        current_size = ({"tier": spec["tier"]} if spec.get("tier") else
                        {k: spec[k] for k in ("vcpu", "ram_gb", "disk_gb")})
        quote, current, status = await asyncio.gather(
            you.estimate(user.organisation_id, {"tier": tier}),
            you.estimate(user.organisation_id, current_size), you.wallet(user.wallet_id))
        return quote, status, domain.resize_increase(quote["monthly_minor"],
                                                     current["monthly_minor"])

    def shortfall(needed: int, status: dict[str, Any], resize: bool) -> str:
        if resize:
            return domain.resize_shortfall_message(needed, status["available_minor"],
                                                   status["currency"])
        return domain.shortfall_message(needed, status["available_minor"], status["currency"])

    @app.get("/vms/estimate")
    async def estimate(user: User, tier: str, vm: uuid.UUID | None = None) -> JSONResponse:
        """The live estimate the new-VM and resize forms show as the size changes."""
        if user.organisation_id is None or user.wallet_id is None or tier not in TIERS:
            return JSONResponse({"error": "choose a size"}, status_code=422)
        quote, status, needed = await priced(user, tier, vm)
        short = domain.insufficient(needed, status["available_minor"])
        return JSONResponse({
            "hourly": quote["hourly"], "monthly": quote["monthly"],
            "available": domain.money(status["available_minor"], status["currency"]),
            "insufficient": short,
            "message": shortfall(needed, status, vm is not None) if short else ""})

    @app.post("/vms", dependencies=[Checked])
    async def new_vm(request: Request, user: User, name: Annotated[str, Form()],
                     tier: Annotated[str, Form()]) -> Response:
        if user.organisation_id is None or user.wallet_id is None:
            raise ServiceError(403, "only an organisation's key may ask for VMs")
        if tier not in TIERS:
            return back(request, "/vms", "Choose one of the sizes offered.", "error")
        quote, status, needed = await priced(user, tier, None)
        # The wallet decides for certain when it reserves; this refuses early, and in words.
        if domain.insufficient(needed, status["available_minor"]):
            return back(request, "/vms", shortfall(needed, status, False), "error")
        try:
            asked = await client(user).request_vm(user.organisation_id, name.strip(),
                                                  {"tier": tier}, str(uuid.uuid4()))
        except ServiceError as error:
            return back(request, "/vms", f"The VM was not requested: {error.detail}", "error")
        user.requests = [asked["request_id"], *user.requests][:10]
        return back(request, "/vms", f"Asked for {name.strip()} ({tier}); "
                    f"{quote['monthly']} for its first month is being reserved.")

    @app.post("/vms/{vm_id}/resize", dependencies=[Checked])
    async def resize(request: Request, vm_id: uuid.UUID, user: User,
                     tier: Annotated[str, Form()]) -> Response:
        if tier not in TIERS or user.organisation_id is None:
            return back(request, "/vms", "Choose one of the sizes offered.", "error")
        _, status, needed = await priced(user, tier, vm_id)
        if domain.insufficient(needed, status["available_minor"]):
            return back(request, "/vms", shortfall(needed, status, True), "error")
        try:
            asked = await client(user).resize(str(vm_id), {"tier": tier})
        except ServiceError as error:
            return back(request, "/vms", f"The VM was not resized: {error.detail}", "error")
        user.requests = [asked["request_id"], *user.requests][:10]
        return back(request, "/vms", f"Resize to {tier} asked for.")

    @app.post("/vms/{vm_id}/delete", dependencies=[Checked])
    async def delete(request: Request, vm_id: uuid.UUID, user: User) -> Response:
        try:
            vm = await client(user).delete_vm(str(vm_id))
        except ServiceError as error:
            return back(request, "/vms", f"The VM was not deleted: {error.detail}", "error")
        return back(request, "/vms", f"{vm['name']} is being deleted.")

    @app.post("/requests/{request_id}/cancel", dependencies=[Checked])
    async def cancel(request: Request, request_id: uuid.UUID, user: User) -> Response:
        try:
            await client(user).cancel_request(str(request_id))
        except ServiceError as error:
            return back(request, "/vms", f"The request was not cancelled: {error.detail}",
                        "error")
        return back(request, "/vms", "Request cancelled; its reserved funds are released.")

    from services.portal.staff_routes import register_staff_routes

    register_staff_routes(portal, page, back, status_of, client)

    from services.portal.simulation import register_simulation_routes

    register_simulation_routes(portal, page, back)
