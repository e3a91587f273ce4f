"""The HTTP intake writer: concurrent VM requests share one database write.

Whatever arrived while the previous write ran goes into the next one: no added delay when
idle, and under load the batches grow instead of the queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import asyncpg
import structlog
from prometheus_client import Histogram

log = structlog.get_logger(__name__)

INTAKE_BATCH = Histogram("cloudwallet_provisioning_intake_batch_size",
                         "HTTP VM requests stored per intake write",
                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
INTAKE_SECONDS = Histogram("cloudwallet_provisioning_intake_seconds",
                           "Duration of one intake write",
                           buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1))

In = TypeVar("In")
Out = TypeVar("Out")


class IntakeQueue(Generic[In, Out]):
    """`write(conn, items)` stores a batch and returns one result per item, in order."""

    def __init__(self, pool: Callable[[], asyncpg.Pool],
                 write: Callable[[asyncpg.Connection, Sequence[In]], Awaitable[list[Out]]],
                 max_batch: int = 500) -> None:
        self._pool = pool
        self._write_batch = write
        self.max_batch = max_batch
        self._waiting: list[tuple[In, asyncio.Future[Out]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="provisioning-intake")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for _, future in self._waiting:
            future.cancel()
        self._waiting = []

    async def submit(self, item: In) -> Out:
        if self._task is None:
            raise RuntimeError("intake is not running")
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                async with self._pool().acquire() as conn:
                    while self._waiting:
                        await self._write(conn)
            except Exception:
                log.exception("provisioning intake failed")
                if self._waiting:  # the failed batch got its error; retry the rest soon
                    await asyncio.sleep(0.1)
                    self._wake.set()

    async def _write(self, conn: asyncpg.Connection) -> None:
        batch = self._waiting[:self.max_batch]
        self._waiting = self._waiting[self.max_batch:]
        INTAKE_BATCH.observe(len(batch))
        try:
            with INTAKE_SECONDS.time():
                results = await self._write_batch(conn, [item for item, _ in batch])
        except REFUSED_ITEM as error:
            if len(batch) > 1:
                await self._write_one_by_one(conn, batch)
            else:
                _fail(batch, error)  # answered: the next batch goes on at once
            return
        except BaseException as error:  # a stop (cancel) included: no caller waits forever
            _fail(batch, error)
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _write_one_by_one(self, conn: asyncpg.Connection,
                                batch: list[tuple[In, asyncio.Future[Out]]]) -> None:
        """One item the database refuses must not fail the others: each on its own. Any
        other error fails the items not yet answered (none is left waiting)."""
        try:
            for item, future in batch:
                try:
                    (result,) = await self._write_batch(conn, [item])
                except REFUSED_ITEM as error:
                    if not future.done():
                        future.set_exception(error)
                    continue
                if not future.done():
                    future.set_result(result)
        except BaseException as error:
            _fail(batch, error)
            raise


# What the database refuses because of one item's values (not the connection, not a bug in
# the statement): worth writing the batch's other items one by one.
REFUSED_ITEM = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


def _fail(batch: Sequence[tuple[object, asyncio.Future[Out]]], error: BaseException) -> None:
    """Answer the items not answered yet with `error` (a cancellation: the queue stopped)."""
    if not isinstance(error, Exception):
        error = RuntimeError("stopped")
    for _, future in batch:
        if not future.done():
            future.set_exception(error)
