"""The inbox claim statements on the real database (issue #17, "duplicate ids with other
content"): each id is stored once with the digest of its first occurrence, and one round
trip tells the ids new, the ids seen before with the same content (redeliveries), and those
seen with other content (dead letters); rows stored before digests were kept stay
redeliveries. `claim_new` (metering, provisioning) and the wallet's claim-and-lock."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import pytest
from aiokafka.structs import ConsumerRecord

from services.wallet import repository as wallet_repo
from shared.consumer import REUSED_ID, Incoming, claim_new, judge_claims

pytestmark = pytest.mark.integration


class Message:
    def __init__(self, event_id: UUID, digest: bytes) -> None:
        self.event_id, self.digest = event_id, digest


def batch(*messages: Message) -> list[Incoming[Any]]:
    return [Incoming(ConsumerRecord("t", 0, n, 0, 0, None, b"", None, 0, 0, ()), m)
            for n, m in enumerate(messages)]


async def claim(db: Any, items: list[Incoming[Any]]) -> tuple[list[int], list[int]]:
    """Offsets kept and offsets refused (as reused), in one transaction."""
    async with db.transaction():
        kept, refused = await claim_new(db, "metering", items, digest_of=lambda m: m.digest)
    assert all(r.reason == REUSED_ID for r in refused)
    return [i.record.offset for i in kept], [r.record.offset for r in refused]


async def test_claim_new_tells_new_repeated_and_reused_ids(env, db):
    a, b, c, old = uuid4(), uuid4(), uuid4(), uuid4()
    # within one batch: the first of an id is kept, the same again skipped, another refused
    assert await claim(db, batch(Message(a, b"x"), Message(b, b"y"), Message(a, b"x"),
                                 Message(a, b"z"))) == ([0, 1], [3])
    stored = dict(await db.fetch("SELECT message_id, digest FROM metering.inbox"))
    assert stored == {a: b"x", b: b"y"}  # the first occurrence's digest, once
    # a later batch: a redelivery skipped, other content refused, a new id kept
    assert await claim(db, batch(Message(a, b"x"), Message(b, b"other"), Message(c, b"w"))) \
        == ([2], [1])
    # a row from before digests were kept: whatever comes under its id is a redelivery
    await db.execute("INSERT INTO metering.inbox (message_id) VALUES ($1)", old)
    assert await claim(db, batch(Message(old, b"anything"))) == ([], [])


async def test_the_wallet_claims_and_locks_in_one_statement(env, db):
    a, b = uuid4(), uuid4()
    async with db.transaction():
        fresh, stored, _clock, wallets = await wallet_repo.claim_and_lock(
            db, [a, b, a], [b"x", b"y", b"z"], [uuid4()])
    assert (fresh, stored, wallets) == ({a, b}, {}, {})
    async with db.transaction():
        fresh, stored, _clock, wallets = await wallet_repo.claim_and_lock(
            db, [a, b, uuid4()], [b"x", b"changed", b"n"], [])
    assert len(fresh) == 1 and stored == {a: b"x", b: b"y"}
    items = batch(Message(a, b"x"), Message(b, b"changed"))
    assert judge_claims(items, [a, b], [b"x", b"changed"], set(), stored)[1][0].record.offset \
        == 1
