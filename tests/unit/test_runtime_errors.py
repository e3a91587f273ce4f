"""HTTP errors every service shares, all RFC 9457 problem documents: text the database
cannot store is the caller's 422 (without echoing it), any other database error stays a 500
(without its message), and validation errors name what is wrong without repeating the
input."""

from __future__ import annotations

import asyncpg
import httpx
from pydantic import BaseModel

from shared.runtime import ServiceRuntime
from shared.settings import Settings


class Body(BaseModel):
    name: str


def client() -> httpx.AsyncClient:
    runtime = ServiceRuntime("test", None, Settings())

    @runtime.http.post("/text")
    async def text(body: Body) -> None:
        raise asyncpg.CharacterNotInRepertoireError("invalid byte sequence: " + body.name)

    @runtime.http.post("/ours")
    async def ours(body: Body) -> None:
        raise asyncpg.DivisionByZeroError("division by zero")

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=runtime.http,
                                                           raise_app_exceptions=False),
                             base_url="http://test")


async def test_text_the_database_refuses_is_a_422_without_the_text():
    async with client() as http:
        response = await http.post("/text", json={"name": "secret"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {"type": "about:blank", "title": "Unprocessable Entity",
                               "status": 422, "detail": "a text value cannot be stored"}


async def test_another_database_error_stays_a_500():
    async with client() as http:
        response = await http.post("/ours", json={"name": "x"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 500 and "division" not in response.text


async def test_validation_errors_do_not_repeat_the_input():
    async with client() as http:
        response = await http.post("/text", content=b'{"name": "\\ud800"}',
                                   headers={"content-type": "application/json"})
        missing = await http.post("/text", json={"nom": "secret"})
    assert response.status_code == 422 and missing.status_code == 422
    problem = missing.json()
    assert "secret" not in missing.text and "input" not in problem["errors"][0]
    assert problem["errors"][0]["loc"] == ["body", "name"]
    assert problem["status"] == 422 and "body.name" in problem["detail"]
    assert "ud800" not in response.text and "\ud800" not in response.text


async def test_unknown_routes_and_methods_are_problem_documents():
    async with client() as http:
        missing = await http.get("/nowhere")
        wrong_method = await http.get("/text")
    assert missing.status_code == 404 and missing.json()["title"] == "Not Found"
    assert missing.headers["content-type"] == "application/problem+json"
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["status"] == 405
