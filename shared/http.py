"""What every service's HTTP API shares at its edge: API key authentication with roles and a
per-key rate limit, a request body size limit, and RFC 9457 problem documents for every
error."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Annotated, Any

import asyncpg
import structlog
from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.api_keys import authenticate
from shared.auth import (
    ACTORS,
    MACHINES,
    OPERATORS,
    READERS,
    InvalidKey,
    Principal,
    Role,
    TokenBucket,
)

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
_BEARER = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer cw_…`")


def problem(status: int, detail: str, headers: dict[str, str] | None = None,
            **extensions: Any) -> JSONResponse:
    """An RFC 9457 problem document. `type` is about:blank, so `title` is the status's
    phrase; `detail` says what went wrong in words that never repeat the input."""
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status,
            "detail": detail, **extensions}
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        detail = error.detail if isinstance(error.detail, str) else HTTPStatus(
            error.status_code).phrase
        return problem(error.status_code, detail, dict(error.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        # What was wrong and where, without echoing the input back (it may be text that
        # cannot even be encoded, such as a lone surrogate).
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                  for e in error.errors()]
        where = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
                          for e in errors[:3])
        return problem(422, f"the request is invalid: {where}", errors=errors)

    async def unstorable(request: Request, error: Exception) -> JSONResponse:
        # Text the request validation let through but PostgreSQL cannot hold: the caller's
        # input (the models' own checks should catch it first). Other database errors stay
        # 500s: they are ours.
        log.warning("request text refused by the database", path=request.url.path,
                    error=type(error).__name__)
        return problem(422, "a text value cannot be stored")

    for refused in (asyncpg.CharacterNotInRepertoireError,
                    asyncpg.UntranslatableCharacterError,
                    asyncpg.StringDataRightTruncationError):
        app.add_exception_handler(refused, unstorable)

    @app.exception_handler(Exception)
    async def ours(request: Request, error: Exception) -> JSONResponse:
        log.error("request failed", path=request.url.path, error=type(error).__name__)
        return problem(500, "the service failed to answer; the request may be retried")


PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem", "type": "object", "required": ["type", "title", "status", "detail"],
    "description": "An RFC 9457 problem document.",
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "errors": {"type": "array", "description": "Where the request is invalid (422)",
                   "items": {"type": "object"}},
    },
}
_REFUSALS = (400, 404, 405, 409, 413, 422)
_KEY_REFUSALS = (401, 403, 429)


def document_problems(app: FastAPI) -> None:
    """The app's OpenAPI document states every error answer as a problem document (FastAPI's
    own 422 body is not what these services send), and the key refusals of routes that need
    a key."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = get_openapi(title=app.title, version=app.version, routes=app.routes,
                               description=app.description)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for fastapi_own in ("HTTPValidationError", "ValidationError"):
            schemas.pop(fastapi_own, None)
        schemas["Problem"] = PROBLEM_SCHEMA
        for path, operations in document.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                codes = [] if path == "/health" else [*_REFUSALS, 503]
                if operation.get("security"):
                    codes += _KEY_REFUSALS
                codes += [int(c) for c in responses if c.startswith("4") and int(c) not in codes]
                for code in sorted(codes):
                    responses[str(code)] = _problem_response(code)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _problem_response(code: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": HTTPStatus(code).phrase,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    if code == 429:
        response["headers"] = {"Retry-After": {
            "description": "Seconds until the key may call again",
            "schema": {"type": "integer", "minimum": 1}}}
    if code == 503:
        response["headers"] = {"Retry-After": {
            "description": "Seconds to wait: the process is at its requests in flight",
            "schema": {"type": "integer", "minimum": 1}}}
    if code == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return response


class BodySizeLimit:
    """413 for a body over `max_bytes`: from its Content-Length before reading it, or as soon
    as a body without one grows past it (the app then sees the client gone, and whatever it
    answers is dropped)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or
                                     int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = refused = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not started:
                    refused = True
                    await self._refuse(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted_receive, watched_send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(413, f"the request body is over {self.max_bytes} bytes")
        await response(scope, receive, send)


class InFlightLimit:
    """503 with `Retry-After` while `max_in_flight` requests are being handled: admission
    control, so an overloaded process refuses at once (the client backs off) instead of
    letting every connection wait in its event loop with its memory. /health is never
    refused: an orchestrator must not restart a process for being busy."""

    RETRY_AFTER_S = 1

    def __init__(self, app: ASGIApp, max_in_flight: int) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            response = problem(503, "the service is at capacity; try again shortly",
                               headers={"Retry-After": str(self.RETRY_AFTER_S)})
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class Guard:
    """Lets a request in only with a valid key of an allowed role, within the key's rate
    limit. Routes take it through `require` (or the aliases below), which finds the app's
    guard in `app.state.guard`. The route then checks that the resource it touches belongs
    to an organisation the caller may see, and answers 404 when it does not, exactly as for
    a resource that does not exist."""

    def __init__(self, pool: Callable[[], asyncpg.Pool], rate_per_s: float,
                 burst: int) -> None:
        self._pool = pool
        self._rate = rate_per_s
        self._burst = burst
        self._buckets: dict[str, TokenBucket] = {}

    async def admit(self, credentials: HTTPAuthorizationCredentials | None,
                    allowed: frozenset[Role]) -> Principal:
        if credentials is None:
            raise HTTPException(401, "an API key is required (Authorization: Bearer)",
                                headers={"WWW-Authenticate": "Bearer"})
        try:
            principal = await authenticate(self._pool(), credentials.credentials)
        except InvalidKey:
            raise HTTPException(401, "the API key is not valid: unknown, revoked or expired",
                                headers={"WWW-Authenticate": "Bearer"}) from None
        self._throttle(principal.key_id)
        if principal.role not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise HTTPException(403, f"this endpoint is for {names} keys")
        return principal

    def _throttle(self, key_id: str) -> None:
        now = time.monotonic()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = TokenBucket(self._rate, self._burst,
                                                         self._burst, now)
        wait = bucket.take(now)
        if wait:
            raise HTTPException(429, "too many requests for this API key",
                                headers={"Retry-After": str(max(1, math.ceil(wait)))})


def require(*roles: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting keys of these roles; it returns the caller."""
    allowed = frozenset(roles)

    async def caller(request: Request, credentials: Annotated[
            HTTPAuthorizationCredentials | None, Security(_BEARER)]) -> Principal:
        guard: Guard = request.app.state.guard
        return await guard.admit(credentials, allowed)

    return caller


# Route parameters (module level, so FastAPI can resolve them from string annotations).
ReaderKey = Annotated[Principal, Depends(require(*READERS))]
ActorKey = Annotated[Principal, Depends(require(*ACTORS))]
OperatorKey = Annotated[Principal, Depends(require(*OPERATORS))]
MachineKey = Annotated[Principal, Depends(require(*MACHINES))]
