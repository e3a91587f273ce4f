"""`IntakeQueue`: concurrent submissions share one write, and an item the database refuses
fails alone, not the batch it came in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from services.provisioning.intake import IntakeQueue


class Pool:
    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        yield None


async def test_an_item_the_database_refuses_fails_alone():
    writes: list[list[str]] = []

    async def write(conn: Any, items: Sequence[str]) -> list[str]:
        writes.append(list(items))
        if "bad" in items:
            raise asyncpg.DataError("invalid byte sequence")
        return [item.upper() for item in items]

    queue: IntakeQueue[str, str] = IntakeQueue(lambda: Pool(), write)  # type: ignore[arg-type]
    queue.start()
    try:
        results = await asyncio.gather(queue.submit("a"), queue.submit("bad"),
                                       queue.submit("b"), return_exceptions=True)
    finally:
        await queue.stop()
    assert results[0] == "A" and results[2] == "B"
    assert isinstance(results[1], asyncpg.DataError)
    assert writes == [["a", "bad", "b"], ["a"], ["bad"], ["b"]]


async def test_an_error_that_is_not_the_databases_fails_the_batch():
    async def write(conn: Any, items: Sequence[str]) -> list[str]:
        raise RuntimeError("bug")

    queue: IntakeQueue[str, str] = IntakeQueue(lambda: Pool(), write)  # type: ignore[arg-type]
    queue.start()
    try:
        with pytest.raises(RuntimeError):
            await queue.submit("a")
    finally:
        await queue.stop()


async def test_a_connection_lost_while_writing_one_by_one_answers_every_item():
    async def write(conn: Any, items: Sequence[str]) -> list[str]:
        if len(items) > 1:
            raise asyncpg.DataError("invalid byte sequence")
        raise asyncpg.InterfaceError("connection is closed")

    queue: IntakeQueue[str, str] = IntakeQueue(lambda: Pool(), write)  # type: ignore[arg-type]
    queue.start()
    try:
        results = await asyncio.wait_for(asyncio.gather(
            queue.submit("a"), queue.submit("b"), return_exceptions=True), 5)
    finally:
        await queue.stop()
    assert all(isinstance(r, asyncpg.InterfaceError) for r in results)


async def test_a_lone_refused_item_is_answered_and_a_stop_answers_a_batch_being_written():
    started = asyncio.Event()

    async def write(conn: Any, items: Sequence[str]) -> list[str]:
        if items == ["bad"]:
            raise asyncpg.DataError("invalid byte sequence")
        started.set()
        await asyncio.sleep(60)  # a write still running when the service stops
        return list(items)

    queue: IntakeQueue[str, str] = IntakeQueue(lambda: Pool(), write)  # type: ignore[arg-type]
    queue.start()
    with pytest.raises(asyncpg.DataError):
        await queue.submit("bad")
    slow = asyncio.create_task(queue.submit("slow"))
    await started.wait()
    await queue.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        await asyncio.wait_for(slow, 5)
