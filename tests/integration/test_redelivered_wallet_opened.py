"""A `WalletOpened` published twice (a relay's retry, or two wallet instances) can reach a
consumer twice in one batch: the services that mirror wallets store it once, rather than
failing the batch on every redelivery (ON CONFLICT cannot touch one row twice)."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import asyncpg

from services.billing import repository as billing_repo
from services.provisioning import repository as provisioning_repo
from services.provisioning.domain import Organisation

OPENED_AT = datetime(2026, 1, 1, tzinfo=UTC)


async def test_provisioning_stores_an_organisation_opened_twice_in_one_batch(
        db: asyncpg.Connection):
    org = Organisation(uuid4(), uuid4(), "ZAR", "PAYG")
    invoiced = Organisation(org.organisation_id, org.wallet_id, "ZAR", "INVOICE")
    async with db.transaction():
        await provisioning_repo.upsert_organisations(db, [org, invoiced],
                                                     [OPENED_AT, OPENED_AT])
    stored = await db.fetch("SELECT billing_mode FROM provisioning.organisations "
                            "WHERE organisation_id = $1", org.organisation_id)
    assert [r["billing_mode"] for r in stored] == ["INVOICE"]  # the batch's last


async def test_billing_stores_a_wallet_opened_twice_in_one_batch(db: asyncpg.Connection):
    wallet_id, org_id = uuid4(), uuid4()
    async with db.transaction():
        await billing_repo.upsert_wallets(db, [
            (wallet_id, org_id, "first name", "ZAR", "PAYG", 3, OPENED_AT),
            (wallet_id, org_id, "second name", "ZAR", "PAYG", 3, OPENED_AT)])
    stored = await db.fetch("SELECT organisation_name FROM billing.wallets WHERE wallet_id = $1",
                            wallet_id)
    assert [r["organisation_name"] for r in stored] == ["second name"]
