"""What a portal sends when it publishes VM requests to Kafka instead of calling HTTP."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import Field

from shared.contracts.base import Envelope, StorableText
from shared.contracts.vm import VmSpec


class RequestVm(Envelope):
    """`idempotency_key` is the portal's own: the same key never creates a second VM."""

    type: Literal["portal.request_vm"] = "portal.request_vm"
    version: Literal[1] = 1
    idempotency_key: StorableText = Field(min_length=1, max_length=120)
    organisation_id: UUID
    name: StorableText = Field(min_length=1, max_length=80)
    spec: VmSpec
