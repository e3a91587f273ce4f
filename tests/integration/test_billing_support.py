"""Running billing next to the real wallet, and an independent model of the month's charges
(plain fractions, written from the price list, not from the production rating code)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any
from uuid import UUID, uuid4

import httpx

from services.billing.app import BillingService
from shared.contracts.metering import HourlyUsage, MeteringWatermark, UsageSegment, usage_id
from shared.contracts.vm import VmSpec
from shared.settings import Settings
from shared.topics import BILLING_EVENTS, METERING_USAGE, VCENTER_EVENTS
from tests.kafka_helpers import KafkaProbe
from tests.keys import key_ring

JAN = datetime(2026, 1, 1, tzinfo=UTC)
FEB = datetime(2026, 2, 1, tzinfo=UTC)
HOURS_PER_MONTH = 730
TIER_MONTHLY = {"small": 15_000, "medium": 30_000, "large": 60_000, "enterprise": 120_000}


def hourly_price(spec: VmSpec, monthly: dict[str, int] | None = None) -> Fraction:
    """The price list in plain arithmetic: a tier's monthly price over 730 hours, or
    R0.12 per vCPU-hour, R0.04 per GB-RAM-hour and R0.0002 per GB-disk-hour."""
    if spec.tier:
        return Fraction((monthly or TIER_MONTHLY)[spec.tier], HOURS_PER_MONTH)
    return Fraction(spec.vcpu * 12 + spec.ram_gb * 4) + Fraction(spec.disk_gb, 50)


def expected_vm_month(hours: list[list[tuple[VmSpec, int]]],
                      monthly_at: Any = lambda hour: None) -> tuple[int, int]:
    """(charge, seconds metered) of one VM month: each hour's exact price rounded down once,
    summed, capped at the highest monthly price of the sizes it ran at."""
    rated = 0
    cap = 0
    seconds = 0
    for index, segments in enumerate(hours):
        prices = monthly_at(index)
        exact = sum((hourly_price(spec, prices) * s / 3600 for spec, s in segments), Fraction(0))
        rated += exact.numerator // exact.denominator
        seconds += sum(s for _, s in segments)
        for spec, s in segments:
            if s:
                cap = max(cap, int(hourly_price(spec, prices) * HOURS_PER_MONTH))
    return min(rated, cap), seconds


def usage(vm_id: UUID, wallet_id: UUID, org_id: UUID, hour_start: datetime,
          segments: list[tuple[VmSpec, int]], revision: int = 0) -> HourlyUsage:
    return HourlyUsage(
        usage_id=usage_id(vm_id, hour_start, revision), vm_id=vm_id, wallet_id=wallet_id,
        organisation_id=org_id, hour_start=hour_start, revision=revision,
        seconds=sum(s for _, s in segments),
        segments=[UsageSegment(spec=spec, seconds=s) for spec, s in segments],
        occurred_at=hour_start + timedelta(hours=1))


async def publish_watermarks(kafka: KafkaProbe, settings: Settings, up_to: datetime) -> None:
    """What metering does after closing the hours up to `up_to` of every vcenter.events
    partition: a watermark per source partition in every partition of metering.usage."""
    topic = settings.topic(METERING_USAGE.name)
    for source in range(VCENTER_EVENTS.partitions):
        for partition in range(METERING_USAGE.partitions):
            mark = MeteringWatermark(source_partition=source, up_to=up_to, occurred_at=up_to)
            await kafka.publish(topic, None, mark, partition=partition)


async def month_closed(kafka: KafkaProbe, settings: Settings, wallet_ids: list[UUID],
                       month: str, timeout: float = 60) -> dict[UUID, dict[str, Any]]:
    wanted = {str(w) for w in wallet_ids}

    def mine(m: dict[str, Any]) -> bool:
        return (m["type"] == "billing.month_closed" and m["wallet_id"] in wanted
                and m["month"] == month)

    found = await kafka.read_count(settings.topic(BILLING_EVENTS.name), len(wanted),
                                   timeout=timeout, where=mine)
    by_wallet = {UUID(m["wallet_id"]): m for m in found}
    assert set(by_wallet) == set(wallet_ids), f"closed: {sorted(by_wallet)}"
    return by_wallet


@asynccontextmanager
async def running_billing(settings: Settings, **options: Any
                          ) -> AsyncIterator[tuple[BillingService, httpx.AsyncClient]]:
    service = BillingService(settings, **options)
    await service.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http),
                                     base_url="http://billing",
                                     auth=await key_ring(service.pool)) as http:
            yield service, http
    finally:
        await service.stop()


def new_vm() -> UUID:
    return uuid4()
