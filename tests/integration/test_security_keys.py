"""API keys over their life (the CLI creates, lists and revokes them; an expired or revoked
key is refused everywhere), a reseller reading its customers, and the record of which key
moved money or changed a wallet, shown on the statement."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import httpx

from shared.api_keys import issue_key, revoke_key
from shared.auth import Role
from shared.contracts.wallet import DebitWallet
from shared.money import MoneyModel
from shared.topics import BILLING_DEBITS
from tests.integration.wallet_fixtures import running_wallet
from tests.kafka_helpers import KafkaProbe

CLI = Path(sys.executable).with_name("cloudwallet")


async def cli(database_url: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(CLI), "keys", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "DATABASE_URL": database_url})
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_keys_made_listed_and_revoked_with_the_cli(env, db: asyncpg.Connection):
    async with running_wallet(env.settings) as (_, wallet):
        org, w = await wallet.open()
        code, out, err = await cli(env.database_url, "create", "organisation", "--name",
                                   "portal", "--organisation", str(org), "--days", "30")
        assert code == 0, err
        token = out.strip()
        key_id = token.split("_")[1]
        assert f"key id: {key_id}" in err
        stored = await db.fetchrow("SELECT * FROM auth.api_keys WHERE key_id = $1", key_id)
        assert token.encode() not in bytes(stored["secret_hash"])
        assert token not in str(dict(stored))  # only the hash is kept
        assert stored["expires_at"] - datetime.now(UTC) > timedelta(days=29)

        assert (await wallet.http.get(f"/wallets/{w}", headers=bearer(token))).status_code == 200
        code, out, _ = await cli(env.database_url, "list")
        assert code == 0 and key_id in out and token not in out

        code, out, _ = await cli(env.database_url, "revoke", key_id)
        assert code == 0 and "revoked" in out
        refused = await wallet.http.get(f"/wallets/{w}", headers=bearer(token))
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert (await cli(env.database_url, "revoke", key_id))[0] == 1

        code, _, err = await cli(env.database_url, "create", "organisation", "--name", "x")
        assert code != 0 and "needs an organisation" in err


async def test_expired_and_revoked_keys_are_refused(env):
    async with running_wallet(env.settings) as (service, wallet):
        org, w = await wallet.open()
        expired = await issue_key(service.pool, name="old", role=Role.ORGANISATION,
                                  organisation_id=org, valid_for=timedelta(seconds=-1))
        revoked = await issue_key(service.pool, name="gone", role=Role.OPERATOR)
        assert await revoke_key(service.pool, revoked.key_id)
        for token in (expired.token, revoked.token, "not-a-key", expired.token + "x"):
            response = await wallet.http.get(f"/wallets/{w}", headers=bearer(token))
            assert response.status_code == 401, token
            assert response.json()["detail"] == \
                "the API key is not valid: unknown, revoked or expired"
            assert token not in response.text


async def test_a_reseller_reads_its_customers_but_acts_only_for_itself(env):
    async with running_wallet(env.settings) as (service, wallet):
        opened = await wallet.http.post("/organisations", json={"name": "r", "kind": "reseller"})
        reseller = UUID(opened.json()["organisation_id"])
        customer = await wallet.http.post("/organisations", json={
            "name": "c", "reseller_id": str(reseller)})
        customer_wallet = customer.json()["wallet_id"]
        _, stranger_wallet = await wallet.open()
        key = (await issue_key(service.pool, name="reseller portal", role=Role.RESELLER,
                               organisation_id=reseller)).token
        own = (await wallet.http.get(f"/organisations/{reseller}/wallet", headers=bearer(key)))
        assert own.status_code == 200
        assert own.json()["organisation_name"] == "r"
        read = await wallet.http.get(f"/wallets/{customer_wallet}", headers=bearer(key))
        assert read.status_code == 200
        assert read.json()["organisation_name"] == "c"  # the portal lists customers by name
        assert (await wallet.http.get(f"/wallets/{stranger_wallet}",
                                      headers=bearer(key))).status_code == 404
        changed = await wallet.http.put(f"/wallets/{customer_wallet}/auto-topup",
                                        json={"enabled": False}, headers=bearer(key))
        assert changed.status_code == 404
        mine = await wallet.http.put(f"/wallets/{own.json()['wallet_id']}/auto-topup",
                                     json={"enabled": False}, headers=bearer(key))
        assert mine.status_code == 200


async def test_each_key_action_is_recorded_and_the_statement_shows_it(env):
    async with running_wallet(env.settings) as (service, wallet), \
            KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        org, w = await wallet.open(balance=10_000)
        operator = await issue_key(service.pool, name="staff", role=Role.OPERATOR)
        portal = await issue_key(service.pool, name="portal", role=Role.ORGANISATION,
                                 organisation_id=org)
        charge = DebitWallet(debit_id=uuid4(), wallet_id=w, vm_id=uuid4(),
                             amount=MoneyModel(amount_minor=1_000), description="usage")
        await kafka.publish(env.topic(BILLING_DEBITS.name), w, charge)
        period = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}

        async def charged() -> list[dict[str, object]]:
            statement = (await wallet.http.get(f"/wallets/{w}/statement", params=period)).json()
            return [e for e in statement["entries"] if e["kind"] == "usage_debit"]

        for _ in range(200):
            if entries := await charged():
                break
            await asyncio.sleep(0.05)
        assert entries, "the charge was not booked"
        refund = await wallet.http.post(f"/wallets/{w}/refunds", headers=bearer(operator.token),
                                        json={"refund_id": str(uuid4()), "amount_minor": 500,
                                              "charge_entry_id": entries[0]["entry_id"],
                                              "reason": "goodwill"})
        assert refund.status_code == 201, refund.text
        suspended = await wallet.http.put(f"/wallets/{w}/status", headers=bearer(operator.token),
                                          json={"status": "suspended", "reason": "fraud check"})
        assert suspended.status_code == 200
        topup = await wallet.http.put(f"/wallets/{w}/auto-topup", headers=bearer(portal.token),
                                      json={"enabled": True, "threshold_minor": 100,
                                            "amount_minor": 5_000, "card_token": "tok"})
        assert topup.status_code == 200

        statement = (await wallet.http.get(f"/wallets/{w}/statement", params=period)).json()
        refunded = [e for e in statement["entries"] if e["kind"] == "refund"]
        assert [e["key_id"] for e in refunded] == [operator.key_id]
        actions = [(a["action"], a["key_id"], a["detail"]) for a in statement["key_actions"]]
        assert ("refund", operator.key_id, "goodwill") in actions
        assert ("suspended", operator.key_id, "fraud check") in actions
        assert ("auto_topup_on", portal.key_id, "below 100 add 5000") in actions
        assert [a for a in actions if a[0] == "opened"]  # by the fixture's operator key
        assert not any(e["key_id"] for e in statement["entries"] if e["kind"] != "refund")
        await wallet.assert_consistent(w)


async def test_keys_work_across_services_from_one_store(env):
    """The vCenter simulator has no schema of its own: it reads the shared key store."""
    from services.vcenter_simulator.app import VcenterSimulator
    from services.vcenter_simulator.domain import SimulatorConfig

    simulator = VcenterSimulator(env.settings, SimulatorConfig())
    await simulator.start()
    try:
        conn = await asyncpg.connect(env.database_url)
        try:
            machine = await issue_key(conn, name="hooks", role=Role.INTEGRATION)
        finally:
            await conn.close()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=simulator.http),
                                     base_url="http://simulator") as http:
            assert (await http.get("/config", headers=bearer(machine.token))).status_code == 200
            assert (await http.get("/config")).status_code == 401
    finally:
        await simulator.stop()
