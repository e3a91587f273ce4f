"""What a well-behaved client of the services does: send its API key, and wait as long as
`Retry-After` says when its key is over its rate limit."""

from __future__ import annotations

import asyncio

import httpx


class RetryAfterTransport(httpx.AsyncBaseTransport):
    """Sends a request again after a 429, waiting the seconds its Retry-After names."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None, attempts: int = 10
                 ) -> None:
        self.inner = inner or httpx.AsyncHTTPTransport()
        self.attempts = attempts

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        for _ in range(self.attempts - 1):
            response = await self.inner.handle_async_request(request)
            if response.status_code != 429:
                return response
            await response.aclose()
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def client(token: str, timeout: float = 20, limits: httpx.Limits | None = None
           ) -> httpx.AsyncClient:
    """An HTTP client that sends `token` as its bearer key and honours Retry-After."""
    inner = httpx.AsyncHTTPTransport(limits=limits or httpx.Limits())
    return httpx.AsyncClient(transport=RetryAfterTransport(inner), timeout=timeout,
                             headers={"Authorization": f"Bearer {token}"})
