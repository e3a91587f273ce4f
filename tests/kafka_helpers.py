"""Publishing to and reading from the real broker in tests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.contracts.base import Envelope


class KafkaProbe:
    """A producer, and readers that see a topic from its beginning."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=2)

    async def __aenter__(self) -> KafkaProbe:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def publish(self, topic: str, key: object, message: Envelope | bytes,
                      partition: int | None = None) -> None:
        value = message if isinstance(message, bytes) else message.model_dump_json().encode()
        await self.producer.send_and_wait(topic, value, key=str(key).encode() if key else None,
                                          partition=partition)

    async def publish_many(self, topic: str, items: list[tuple[object, Envelope]]) -> None:
        futures = [await self.producer.send(topic, m.model_dump_json().encode(),
                                            key=str(k).encode()) for k, m in items]
        await asyncio.gather(*futures)

    async def read(self, topic: str, *, until: Callable[[list[dict[str, Any]]], bool],
                   timeout: float = 20.0) -> list[dict[str, Any]]:
        """Read the topic from the start until `until(messages)` holds (or time runs out)."""
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=self.bootstrap_servers,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        messages: list[dict[str, Any]] = []
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not until(messages):
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    messages.extend(json.loads(r.value) for r in records)
        finally:
            await consumer.stop()
        return messages

    async def read_count(self, topic: str, count: int, timeout: float = 20.0,
                         where: Callable[[dict[str, Any]], bool] = lambda m: True
                         ) -> list[dict[str, Any]]:
        found = await self.read(topic, until=lambda ms: sum(map(where, ms)) >= count,
                                timeout=timeout)
        return [m for m in found if where(m)]
