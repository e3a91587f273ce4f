"""The portal's session and CSRF rules, in process (no service is reached)."""

from __future__ import annotations

import re

import httpx

from services.portal.app import PortalService, PortalSettings
from services.portal.sessions import SessionStore, csrf_matches
from shared.settings import Settings


def portal_client() -> httpx.AsyncClient:
    portal = PortalService(Settings(), PortalSettings(session_secret="test-secret",
                                                      wallet_url="http://127.0.0.1:9"))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=portal.http),
                             base_url="http://portal")


async def test_pages_need_a_session_and_the_cookie_is_httponly_and_samesite():
    async with portal_client() as http:
        for path in ("/statement", "/vms", "/topup", "/operator"):
            answer = await http.get(path)
            assert (answer.status_code, answer.headers["location"]) == (303, "/signin"), path
        page = await http.get("/signin")
        assert page.status_code == 200
        cookie = page.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        assert 'name="csrf"' in page.text


async def test_a_form_without_the_sessions_csrf_token_is_refused():
    async with portal_client() as http:
        page = await http.get("/signin")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token is not None
        for sent in ({}, {"csrf": "forged"}):
            refused = await http.post("/signin", data={"api_key": "cw_x", **sent})
            assert refused.status_code == 403
        # With the right token the form is taken; the wallet is unreachable here, so the
        # user reads that, not a crash.
        taken = await http.post("/signin", data={"api_key": "cw_x", "csrf": token.group(1)})
        assert taken.status_code == 503
        assert "did not answer" in taken.text


def test_sessions_expire_and_close():
    store = SessionStore(lifetime_s=0)
    me = {"role": "organisation", "organisation_id": "o", "wallet_id": "w", "key_id": "k"}
    assert store.get(store.open("cw_token", me)) is None
    store = SessionStore()
    session = store.open("cw_token", me)
    found = store.get(session)
    assert found is not None and found.token == "cw_token"
    store.close(session)
    assert store.get(session) is None
    assert not csrf_matches(None, "x") and not csrf_matches("x", None)
    assert csrf_matches("abc", "abc") and not csrf_matches("abc", "abd")
