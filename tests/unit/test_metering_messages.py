"""The hot-path encoding of hourly usage must say exactly what the contract says."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from uuid import uuid4

from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from services.metering.domain import Kind, Segment, Size
from services.metering.messages import (
    encode_usage,
    full_hour_segments_json,
    segments_json,
    size_of_json,
    spec_json,
    to_domain,
    usage_from_stored,
    usage_id_text,
    watermark_id,
)
from shared.contracts.metering import HourlyUsage, UsageSegment, UsageStreamItem, usage_id
from shared.contracts.vcenter import VmCreated, VmCreateFailed, VmPoweredOn, VmResized
from shared.contracts.vm import VmSpec

STREAM = TypeAdapter(UsageStreamItem)
HOUR_START = datetime(2026, 3, 2, 10, tzinfo=UTC)
SMALL = Size("small", 1, 2, 50)
CUSTOM = Size(None, 3, 6, 120)


@given(st.uuids(), st.integers(0, 10_000), st.integers(0, 50))
def test_usage_id_text_is_the_contract_usage_id(vm_id, hour_offset, revision):
    hour = HOUR_START + timedelta(hours=hour_offset)
    assert usage_id_text(str(vm_id), hour, revision) == str(usage_id(vm_id, hour, revision))


def test_encoded_usage_parses_to_the_model_pydantic_builds():
    vm_id, wallet_id, organisation_id = uuid4(), uuid4(), uuid4()
    segments = (Segment(SMALL, 900), Segment(CUSTOM, 2000))
    value = encode_usage(str(vm_id), str(wallet_id), str(organisation_id), HOUR_START, 2, 2900,
                         segments_json(segments))
    expected = HourlyUsage(
        event_id=usage_id(vm_id, HOUR_START, 2), usage_id=usage_id(vm_id, HOUR_START, 2),
        vm_id=vm_id, wallet_id=wallet_id, organisation_id=organisation_id,
        hour_start=HOUR_START, revision=2, seconds=2900, occurred_at=HOUR_START + timedelta(
            hours=1),
        segments=[UsageSegment(spec=VmSpec.of_tier("small"), seconds=900),
                  UsageSegment(spec=VmSpec(vcpu=3, ram_gb=6, disk_gb=120), seconds=2000)])
    assert STREAM.validate_json(value) == expected
    # The same JSON too, except that the unset correlation and causation ids are left out.
    full = json.loads(expected.model_dump_json())
    assert full.pop("correlation_id") is None and full.pop("causation_id") is None
    assert json.loads(value) == full


def test_full_hour_segments_use_the_stored_spec_verbatim():
    text = full_hour_segments_json(spec_json(SMALL))
    assert json.loads(text) == [{"spec": {"tier": "small", "vcpu": 1, "ram_gb": 2,
                                          "disk_gb": 50}, "seconds": 3600}]
    assert text == segments_json([Segment(SMALL, 3600)])


def test_stored_usage_reads_back_to_the_domain_value():
    segments = (Segment(SMALL, 100), Segment(CUSTOM, 200))
    usage = usage_from_stored(HOUR_START, 300, segments_json(segments))
    assert usage.segments == segments and usage.seconds == 300
    assert size_of_json(spec_json(CUSTOM)) == CUSTOM


def test_watermark_ids_differ_per_target_partition_and_repeat_on_replay():
    ids = {watermark_id(3, HOUR_START, target) for target in range(6)}
    assert len(ids) == 6
    assert watermark_id(3, HOUR_START, 0) == watermark_id(3, HOUR_START, 0)
    assert watermark_id(2, HOUR_START, 0) != watermark_id(3, HOUR_START, 0)


def test_contract_events_become_domain_events_in_utc():
    vm_id = uuid4()
    at = datetime(2026, 3, 2, 12, 30, tzinfo=timezone(timedelta(hours=2)))
    created = to_domain(VmCreated(vm_id=vm_id, organisation_id=uuid4(), wallet_id=uuid4(),
                                  spec=VmSpec.of_tier("large"), occurred_at=at))
    assert created.kind is Kind.CREATED and created.size == Size("large", 4, 8, 50)
    assert created.at == at and created.at.tzinfo == UTC
    assert to_domain(VmPoweredOn(vm_id=vm_id, occurred_at=at)).kind is Kind.POWERED_ON
    resized = to_domain(VmResized(vm_id=vm_id, spec=VmSpec(vcpu=3, ram_gb=6), occurred_at=at))
    assert resized.size == Size(None, 3, 6, 50)
    failed = to_domain(VmCreateFailed(vm_id=vm_id, reason="no capacity", occurred_at=at))
    assert failed.kind is Kind.CREATE_FAILED


@given(st.uuids())
def test_usage_partition_is_the_producers_default_partition_of_the_wallet(wallet_id):
    from aiokafka.partitioner import DefaultPartitioner

    from services.metering.messages import usage_partition
    from shared.topics import METERING_USAGE

    key = str(wallet_id).encode()
    everyone = list(range(METERING_USAGE.partitions))
    assert usage_partition(key) == DefaultPartitioner()(key, everyone, everyone)
