"""Translation between the contracts and the domain, and the hot-path encoding of usage.

Closing an hour emits one `HourlyUsage` per running VM, tens of thousands per tick, so those
are written from a template rather than through pydantic (about 20x cheaper). The unit tests
hold the template to the contract: what it writes parses to the same model pydantic builds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any
from uuid import UUID

from aiokafka.partitioner import murmur2

from services.metering.domain import HOUR, HourUsage, Kind, Segment, Size, VmEvent, utc
from shared.contracts.base import CONTRACTS_NAMESPACE, deterministic_id
from shared.contracts.vcenter import (
    VmCreated,
    VmCreateFailed,
    VmDeleted,
    VmPoweredOff,
    VmPoweredOn,
    VmResized,
    VmResizeFailed,
    VmResumed,
    VmSuspended,
)
from shared.contracts.vcenter import VmEvent as VmEventMessage
from shared.contracts.vm import VmSpec
from shared.topics import METERING_USAGE

KIND_OF_MESSAGE: dict[type, Kind] = {
    VmCreated: Kind.CREATED,
    VmCreateFailed: Kind.CREATE_FAILED,
    VmPoweredOn: Kind.POWERED_ON,
    VmResumed: Kind.RESUMED,
    VmPoweredOff: Kind.POWERED_OFF,
    VmSuspended: Kind.SUSPENDED,
    VmResized: Kind.RESIZED,
    VmResizeFailed: Kind.RESIZE_FAILED,
    VmDeleted: Kind.DELETED,
}


def size_of(spec: VmSpec) -> Size:
    return Size(spec.tier, spec.vcpu, spec.ram_gb, spec.disk_gb)


def to_domain(message: VmEventMessage) -> VmEvent:
    spec = getattr(message, "spec", None)
    return VmEvent(message.event_id, KIND_OF_MESSAGE[type(message)], utc(message.occurred_at),
                   size_of(spec) if spec is not None else None)


@lru_cache(maxsize=4096)
def spec_json(size: Size) -> str:
    return VmSpec(tier=size.tier, vcpu=size.vcpu, ram_gb=size.ram_gb,  # type: ignore[arg-type]
                  disk_gb=size.disk_gb).model_dump_json()


@lru_cache(maxsize=4096)
def size_of_json(text: str) -> Size:
    return size_of(VmSpec.model_validate_json(text))


def segments_json(segments: Sequence[Segment]) -> str:
    return "[" + ",".join(f'{{"spec":{spec_json(s.size)},"seconds":{s.seconds}}}'
                          for s in segments) + "]"


def full_hour_segments_json(spec_text: str) -> str:
    return f'[{{"spec":{spec_text},"seconds":3600}}]'


def usage_from_stored(hour_start: datetime, seconds: int, segments_text: str) -> HourUsage:
    segments: list[dict[str, Any]] = json.loads(segments_text)
    return HourUsage(hour_start, seconds, tuple(
        Segment(Size(s["spec"].get("tier"), s["spec"]["vcpu"], s["spec"]["ram_gb"],
                     s["spec"]["disk_gb"]), s["seconds"]) for s in segments))


# --- HourlyUsage on the hot path --------------------------------------------------------------

_NAMESPACE = CONTRACTS_NAMESPACE.bytes


@lru_cache(maxsize=1024)
def _hour_texts(hour_start: datetime) -> tuple[str, str, str]:
    """The hour as `usage_id` spells it, as JSON spells it, and its end as JSON spells it."""
    zulu = "%Y-%m-%dT%H:%M:%SZ"
    return hour_start.isoformat(), hour_start.strftime(zulu), (hour_start + HOUR).strftime(zulu)


def usage_id_text(vm_id: str, hour_start: datetime, revision: int) -> str:
    """`shared.contracts.metering.usage_id` as text, without building UUID objects."""
    name = f"metering.hourly_usage|{vm_id}|{_hour_texts(hour_start)[0]}|{revision}"
    digest = bytearray(hashlib.sha1(_NAMESPACE + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@lru_cache(maxsize=1 << 16)
def usage_partition(wallet_key: bytes) -> int:
    """The `metering.usage` partition of a wallet, as the producer's default partitioner
    picks it (murmur2 of the key). Naming it in the outbox spares the relay hashing every
    message again in pure Python, which cost more than everything else it does per message."""
    return (murmur2(wallet_key) & 0x7FFFFFFF) % METERING_USAGE.partitions


def encode_usage(vm_id: str, wallet_id: str, organisation_id: str, hour_start: datetime,
                 revision: int, seconds: int, segments_text: str) -> bytes:
    """An `HourlyUsage` as JSON. The event id is the usage id, and the event time is the end
    of the hour, so every replay writes the very same message."""
    _, start, end = _hour_texts(hour_start)
    uid = usage_id_text(vm_id, hour_start, revision)
    return (
        f'{{"event_id":"{uid}","type":"metering.hourly_usage","version":1,'
        f'"occurred_at":"{end}","usage_id":"{uid}","vm_id":"{vm_id}",'
        f'"wallet_id":"{wallet_id}","organisation_id":"{organisation_id}",'
        f'"hour_start":"{start}","revision":{revision},"seconds":{seconds},'
        f'"segments":{segments_text}}}'
    ).encode()


def watermark_id(source_partition: int, up_to: datetime, target_partition: int) -> UUID:
    """One id per copy: each `metering.usage` partition gets its own watermark message, so a
    consumer deduplicating by event id never drops the copy meant for its partition."""
    return deterministic_id("metering.watermark", source_partition, utc(up_to).isoformat(),
                            target_partition)
