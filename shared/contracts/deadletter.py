"""A message a consumer could not accept, with why and where it came from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.contracts.base import Envelope


class DeadLetter(Envelope):
    type: Literal["deadletter"] = "deadletter"
    version: Literal[1] = 1
    consumer: str
    source_topic: str
    source_partition: int
    source_offset: int
    source_key: str | None = None
    reason: str = Field(max_length=2000)
    payload: str = Field(description="The original value, decoded as UTF-8 with replacement.")
