"""The wallet portal (port 8106): server-rendered pages for customers, resellers and
operators. It owns no data: every page asks the wallet, provisioning and billing services
over their HTTP APIs with the signed-in user's API key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.middleware.sessions import SessionMiddleware

from services.portal.clients import Services, ServiceUrls
from services.portal.routes import register_routes
from services.portal.sessions import SessionStore
from services.portal.simulation import SimulationRunner
from shared.settings import Settings, get_settings

HERE = Path(__file__).resolve().parent


class PortalSettings(BaseSettings):
    """PORTAL_SESSION_SECRET, PORTAL_WALLET_URL, ... from the environment. Service URLs
    default to this machine's ports from the shared settings."""

    model_config = SettingsConfigDict(env_prefix="PORTAL_", env_file=".env", extra="ignore")

    # Signs the session cookie; set it in any real deployment (empty: a random one per
    # process, which signs everyone out on restart).
    session_secret: str = ""
    # Send the cookie over HTTPS only; on behind TLS, off for a plain-HTTP development stack.
    cookie_secure: bool = False
    session_lifetime_s: int = 8 * 3600
    wallet_url: str = ""
    provisioning_url: str = ""
    billing_url: str = ""
    # The folder `cloudwallet demo` writes its report to (report.json and PNG plots).
    simulation_report_dir: str = ".data/demo/report"
    # Whether operators may start a small simulation run from the page (development only:
    # the command starts a whole stack of its own, so never next to a real one).
    simulation_runs: bool = False
    # Empty: this Python's `cloudwallet demo --days 3`.
    simulation_command: str = ""

    def urls(self, settings: Settings) -> ServiceUrls:
        local = "http://127.0.0.1:{}".format
        return ServiceUrls(
            wallet=self.wallet_url or local(settings.wallet_http_port),
            provisioning=self.provisioning_url or local(settings.provisioning_http_port),
            billing=self.billing_url or local(settings.billing_http_port))


class PortalService:
    def __init__(self, settings: Settings, portal: PortalSettings) -> None:
        import secrets

        self.settings = settings
        self.portal = portal
        self.services = Services(portal.urls(settings))
        self.sessions = SessionStore(portal.session_lifetime_s)
        self.simulation: SimulationRunner | None = None

        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            yield
            if self.simulation is not None:
                self.simulation.stop()
            await self.services.aclose()

        self.http = FastAPI(title="cloudwallet portal", lifespan=lifespan, openapi_url=None,
                            docs_url=None, redoc_url=None)
        self.http.add_middleware(
            SessionMiddleware, secret_key=portal.session_secret or secrets.token_urlsafe(32),
            session_cookie="cw_portal", max_age=portal.session_lifetime_s, same_site="lax",
            https_only=portal.cookie_secure)
        self.http.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

        @self.http.get("/health", include_in_schema=False)
        async def health() -> dict[str, str]:
            return {"status": "ok"}

        register_routes(self)


def create_service(settings: Settings | None = None) -> PortalService:
    return PortalService(settings or get_settings(), PortalSettings())
