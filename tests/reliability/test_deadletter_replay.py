"""Dead letters replayed after a fix are booked, and booked once however often they are
replayed: `cloudwallet deadletters list|replay` against the real broker and database.

A usage debit reaches the wallet before its wallet exists (as after a wallet restored from a
backup): it is dead-lettered as an unknown wallet. The wallet is then opened (the fix), the
operator lists the letters of billing.debits, sees the reason and replays the letter: it is
booked. Replayed twice more, nothing changes: one ledger row, balance == sum(ledger)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

import services.wallet.api as wallet_api
from shared.contracts.wallet import DebitWallet
from shared.deadletter_kafka import read_letters
from shared.money import MoneyModel
from shared.topics import BILLING_DEBITS, DEAD_LETTER
from tests.integration.wallet_fixtures import running_wallet
from tests.kafka_helpers import KafkaProbe, settled

CLI = Path(sys.executable).parent / "cloudwallet"


async def cloudwallet(env: Any, *args: str) -> tuple[int, str, str]:
    """The operator's command, as a process of its own, on this test's topics."""
    process = await asyncio.create_subprocess_exec(
        str(CLI), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": env.settings.kafka_bootstrap_servers,
             "DATABASE_URL": env.database_url, "TOPIC_PREFIX": env.settings.topic_prefix,
             "GROUP_PREFIX": env.settings.group_prefix, "LOG_JSON": "false"})
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
def next_wallet_id(monkeypatch: pytest.MonkeyPatch) -> Iterator[UUID]:
    """The id the next wallet opened gets, so a message can name it before it exists."""
    wallet_id = uuid4()
    ids = iter([wallet_id])
    monkeypatch.setattr(wallet_api, "uuid4", lambda: next(ids, uuid4()))
    yield wallet_id


async def test_a_dead_letter_replayed_after_the_fix_is_booked_once(
        env: Any, db: Any, next_wallet_id: UUID) -> None:
    settings = env.settings
    debit = DebitWallet(debit_id=uuid4(), wallet_id=next_wallet_id,
                        amount=MoneyModel(amount_minor=1_234, currency="ZAR"),
                        description="usage before the wallet was restored")
    async with KafkaProbe(settings.kafka_bootstrap_servers) as kafka, \
            running_wallet(settings) as (_, wallet):
        await kafka.publish(env.topic(BILLING_DEBITS.name), debit.wallet_id, debit)
        await settled(kafka, settings, "wallet", [BILLING_DEBITS], database_url=env.database_url)
        [letter] = await read_letters(settings)
        assert letter.letter.reason == f"unknown wallet {next_wallet_id}"

        # the fix: the wallet exists
        _, wallet_id = await wallet.open(balance=10_000)
        assert wallet_id == next_wallet_id

        code, out, err = await cloudwallet(env, "deadletters", "list", "--topic",
                                           "billing.debits")
        assert code == 0, err
        [line] = out.splitlines()
        assert line.startswith(str(letter.letter_id))
        assert f"unknown wallet {next_wallet_id}" in line and "1 dead letters" in err
        code, out, _ = await cloudwallet(env, "deadletters", "list", "--topic", "wallet.topups")
        assert code == 0 and out == ""

        for replay in range(3):  # the replay, then twice more
            code, out, err = await cloudwallet(env, "deadletters", "replay",
                                               str(letter.letter_id)[:13])
            assert code == 0, err
            assert out.strip() == (f"replayed {letter.letter_id} to "
                                   f"{env.topic(BILLING_DEBITS.name)}/"
                                   f"{letter.letter.source_partition}")
            await settled(kafka, settings, "wallet", [BILLING_DEBITS],
                          database_url=env.database_url)
            status = await wallet.status(wallet_id)
            assert status["balance_minor"] == 10_000 - 1_234, f"after replay {replay + 1}"
            rows = await db.fetch(
                "SELECT amount FROM wallet.wallet_transactions WHERE wallet_id = $1 "
                "AND amount < 0", wallet_id)
            assert [r["amount"] for r in rows] == [-1_234]
            await wallet.assert_consistent(wallet_id)
        # booked, so no replay was dead-lettered again
        assert len(await kafka.read_to_end(env.topic(DEAD_LETTER.name))) == 1


async def test_replay_refuses_an_unknown_id_and_sends_nothing(env: Any) -> None:
    async with KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        before = await kafka.end_offsets(env.topic(BILLING_DEBITS.name))
        code, out, err = await cloudwallet(env, "deadletters", "replay", str(uuid4()))
        assert code == 1 and out == "" and "no dead letter" in err
        assert await kafka.end_offsets(env.topic(BILLING_DEBITS.name)) == before
