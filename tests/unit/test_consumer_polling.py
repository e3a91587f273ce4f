"""`shared.consumer` replaces FastStream's batch poll (a private method) so that an empty
poll is not followed by a sleep. These tests fail if a FastStream upgrade stops calling the
replacement or if the replacement sleeps."""

from __future__ import annotations

import inspect
from typing import Any

import anyio
import pytest
from faststream.kafka import KafkaBroker
from faststream.kafka.subscriber.usecase import LogicSubscriber

from shared.consumer import subscribe_batches
from shared.settings import Settings
from shared.topics import PROVISIONING_REQUESTS


class FakeConsumer:
    def __init__(self, batches: list[dict[Any, list[Any]]]) -> None:
        self.batches = batches
        self.calls: list[tuple[int, int]] = []

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        self.calls.append((timeout_ms, max_records))
        return self.batches.pop(0) if self.batches else {}


def subscriber_for(settings: Settings) -> Any:
    broker = KafkaBroker("127.0.0.1:9")

    async def handler(records: Any) -> None:
        return None

    subscribe_batches(broker, settings, PROVISIONING_REQUESTS, "wallet", handler)
    (subscriber,) = broker.subscribers
    return subscriber


def test_faststream_still_polls_through_the_instance_method():
    assert "self.get_msg(consumer)" in inspect.getsource(LogicSubscriber._run_consume_loop)


async def test_an_empty_poll_returns_at_once_without_sleeping(monkeypatch: pytest.MonkeyPatch):
    async def no_sleep(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the poll slept after an empty getmany")

    monkeypatch.setattr(anyio, "sleep", no_sleep)
    settings = Settings(consumer_batch_timeout_ms=100, consumer_batch_size=123)
    subscriber = subscriber_for(settings)
    consumer = FakeConsumer([{}, {"tp0": ["a", "b"], "tp1": ["c"]}])
    assert await subscriber.get_msg(consumer) == ()
    assert await subscriber.get_msg(consumer) == ("a", "b", "c")
    assert consumer.calls == [(100, 123), (100, 123)]
