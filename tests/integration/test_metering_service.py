"""Metering against the real broker and database: vCenter events and clock ticks in,
hourly usage (and corrections) out on `metering.usage`."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import httpx
from aiokafka import AIOKafkaConsumer

from services.metering.app import MeteringService, create_service
from shared.clock import publish_tick
from shared.contracts.base import Envelope
from shared.contracts.metering import usage_id
from shared.contracts.vcenter import (
    VmCreated,
    VmPoweredOff,
    VmPoweredOn,
    VmResized,
)
from shared.contracts.vm import VmSpec
from shared.topics import METERING_USAGE, VCENTER_EVENTS
from tests.kafka_helpers import KafkaProbe
from tests.keys import key_ring

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
SMALL = VmSpec.of_tier("small")
LARGE = VmSpec.of_tier("large")
SMALL_JSON = json.loads(SMALL.model_dump_json())
LARGE_JSON = json.loads(LARGE.model_dump_json())


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


class Vm:
    """Builds one VM's events (same organisation and wallet throughout)."""

    def __init__(self) -> None:
        self.vm_id, self.organisation_id, self.wallet_id = uuid4(), uuid4(), uuid4()

    def created(self, minutes: float, spec: VmSpec = SMALL) -> VmCreated:
        return VmCreated(vm_id=self.vm_id, organisation_id=self.organisation_id,
                         wallet_id=self.wallet_id, spec=spec, occurred_at=at(minutes))

    def on(self, minutes: float) -> VmPoweredOn:
        return VmPoweredOn(vm_id=self.vm_id, occurred_at=at(minutes))

    def off(self, minutes: float) -> VmPoweredOff:
        return VmPoweredOff(vm_id=self.vm_id, occurred_at=at(minutes))

    def resized(self, minutes: float, spec: VmSpec) -> VmResized:
        return VmResized(vm_id=self.vm_id, spec=spec, occurred_at=at(minutes))


class Metering:
    """A test's view of the metering topics: publish events and ticks, read the output."""

    def __init__(self, env: Any, kafka: KafkaProbe) -> None:
        self.env, self.kafka = env, kafka
        self.events_topic = env.topic(VCENTER_EVENTS.name)
        self.usage_topic = env.topic(METERING_USAGE.name)
        self.output: list[dict[str, Any]] = []
        self._reader: AIOKafkaConsumer | None = None

    async def publish(self, *messages: Envelope) -> None:
        for m in messages:
            await self.kafka.publish(self.events_topic, m.vm_id, m)  # type: ignore[attr-defined]

    async def tick(self, minutes: float) -> datetime:
        await publish_tick(self.kafka.producer, self.env.settings, at(minutes))
        return at(minutes)

    async def read_until(self, done: Any, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Read `metering.usage` (from its start, once) until `done(all messages so far)`."""
        if self._reader is None:
            self._reader = AIOKafkaConsumer(
                self.usage_topic, bootstrap_servers=self.kafka.bootstrap_servers,
                auto_offset_reset="earliest", enable_auto_commit=False)
            await self._reader.start()
        deadline = time.monotonic() + timeout
        while not done(self.output):
            assert time.monotonic() < deadline, f"timed out; read {len(self.output)} messages"
            batch = await self._reader.getmany(timeout_ms=200)
            for records in batch.values():
                self.output += [json.loads(r.value) for r in records]
        return self.output

    async def closed(self, up_to: datetime, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait for the watermark `up_to` from every vcenter.events partition in every
        metering.usage partition: then every hour ending by `up_to` has been read."""
        want = VCENTER_EVENTS.partitions * METERING_USAGE.partitions

        def done(messages: list[dict[str, Any]]) -> bool:
            return len({m["event_id"] for m in messages if m["type"] == "metering.watermark"
                        and datetime.fromisoformat(m["up_to"]) == up_to}) >= want

        await self.read_until(done, timeout)
        return self.usage()

    def usage(self, vm: Vm | None = None) -> list[dict[str, Any]]:
        return [m for m in self.output if m["type"] == "metering.hourly_usage"
                and (vm is None or m["vm_id"] == str(vm.vm_id))]

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.stop()


@asynccontextmanager
async def metering(env: Any) -> AsyncIterator[tuple[MeteringService, Metering]]:
    service = create_service(env.settings)
    await service.start()
    try:
        async with KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
            view = Metering(env, kafka)
            try:
                yield service, view
            finally:
                await view.close()
    finally:
        await service.stop()


def hours_of(usage: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Usage by (hour start, revision). The outbox relay publishes at least once, so the very
    same message (same event id, same content) may arrive twice; consumers drop the copy.
    Two different statements of one hour and revision would be a double charge: fail."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for m in usage:
        key = (m["hour_start"], m["revision"])
        assert found.get(key, m) == m, f"hour {key} stated twice, differently"
        found[key] = m
    return found


def hour(h: int) -> str:
    return (T0 + timedelta(hours=h)).isoformat().replace("+00:00", "Z")


async def runtime(service: MeteringService, vm: Vm, month: str = "2026-03") -> dict[str, Any]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http),
                                 base_url="http://metering",
                                 auth=await key_ring(service.pool)) as http:
        response = await http.get(f"/vms/{vm.vm_id}/runtime", params={"month": month})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


# --- scenarios --------------------------------------------------------------------------------

async def test_a_vm_running_90_minutes_across_an_hour_boundary(env):
    vm = Vm()
    async with metering(env) as (service, m):
        await m.publish(vm.created(20), vm.on(30), vm.off(120))
        await m.closed(await m.tick(180))
        usage = hours_of(m.usage(vm))
        assert {k: v["seconds"] for k, v in usage.items()} == {(hour(0), 0): 1800,
                                                               (hour(1), 0): 3600}
        first = usage[(hour(0), 0)]
        assert first["segments"] == [{"spec": SMALL_JSON, "seconds": 1800}]
        expected_id = str(usage_id(vm.vm_id, T0, 0))
        assert first["usage_id"] == first["event_id"] == expected_id
        assert (first["wallet_id"], first["organisation_id"]) == (str(vm.wallet_id),
                                                                  str(vm.organisation_id))
        check = await runtime(service, vm)
        assert (check["metered_seconds"], check["actual_seconds"]) == (5400, 5400)
        assert check["within_actual"] is True


async def test_a_resize_mid_hour_bills_each_size_for_its_part(env):
    vm = Vm()
    async with metering(env) as (_, m):
        await m.publish(vm.created(0), vm.on(0), vm.resized(15, LARGE))
        await m.closed(await m.tick(60))
        (usage,) = m.usage(vm)
        assert usage["seconds"] == 3600
        assert usage["segments"] == [{"spec": SMALL_JSON, "seconds": 900},
                                     {"spec": LARGE_JSON, "seconds": 2700}]


async def test_power_off_and_on_within_one_hour(env):
    vm = Vm()
    async with metering(env) as (_, m):
        await m.publish(vm.created(0), vm.on(0), vm.off(10), vm.on(40))
        await m.closed(await m.tick(120))
        usage = hours_of(m.usage(vm))
        assert {k: v["seconds"] for k, v in usage.items()} == {(hour(0), 0): 600 + 1200,
                                                               (hour(1), 0): 3600}


async def test_a_late_event_restates_the_hour_with_the_difference_visible(env):
    vm = Vm()
    async with metering(env) as (service, m):
        await m.publish(vm.created(0), vm.on(0))
        await m.closed(await m.tick(120))
        assert {k: v["seconds"] for k, v in hours_of(m.usage(vm)).items()} == {
            (hour(0), 0): 3600, (hour(1), 0): 3600}
        # vCenter reports, late, that the VM went off at 10:30: both closed hours change.
        await m.publish(vm.off(30))
        await m.read_until(lambda _: len(m.usage(vm)) >= 4)
        usage = hours_of(m.usage(vm))
        assert usage[(hour(0), 1)]["seconds"] == 1800
        assert usage[(hour(0), 1)]["usage_id"] == str(usage_id(vm.vm_id, T0, 1))
        assert usage[(hour(1), 1)]["seconds"] == 0 and usage[(hour(1), 1)]["segments"] == []
        check = await runtime(service, vm)
        assert (check["metered_seconds"], check["actual_seconds"]) == (1800, 1800)
        # A tick later: no new statements of the restated hours, nothing for hour 2.
        await m.closed(await m.tick(180))
        assert len(m.usage(vm)) == 4


async def test_a_vm_created_in_hours_already_closed_is_stated_right_away(env):
    vm = Vm()
    async with metering(env) as (_, m):
        await m.closed(await m.tick(120))  # every partition has closed 10:00 and 11:00
        await m.publish(vm.created(0), vm.on(15))  # vCenter reports it only now
        await m.read_until(lambda _: len(m.usage(vm)) >= 2)
        assert {k: v["seconds"] for k, v in hours_of(m.usage(vm)).items()} == {
            (hour(0), 0): 2700, (hour(1), 0): 3600}
        await m.closed(await m.tick(180))
        assert {k: v["seconds"] for k, v in hours_of(m.usage(vm)).items()} == {
            (hour(0), 0): 2700, (hour(1), 0): 3600, (hour(2), 0): 3600}


async def test_duplicate_events_and_ticks_change_nothing(env, db):
    vm = Vm()
    created, on = vm.created(0), vm.on(5)
    async with metering(env) as (_, m):
        await m.publish(created, on, created, on)
        # A second power-on (another event id) while running does not restart the clock.
        await m.publish(vm.on(20))
        tick = await m.tick(60)
        await m.tick(60)
        await m.closed(tick)
        await m.publish(on, created)
        await m.closed(await m.tick(120))
        usage = hours_of(m.usage(vm))
        assert {k: v["seconds"] for k, v in usage.items()} == {(hour(0), 0): 3300,
                                                               (hour(1), 0): 3600}
        assert await db.fetchval("SELECT count(*) FROM metering.vm_events WHERE vm_id = $1",
                                 vm.vm_id) == 3
        assert await db.fetchval("SELECT count(*) FROM metering.usage_hours") == 2


async def test_month_wide_runtime_check_and_vm_state(env):
    running, stopped = Vm(), Vm()
    async with metering(env) as (service, m):
        await m.publish(running.created(0), running.on(0), stopped.created(0), stopped.on(0),
                        stopped.off(45))
        await m.closed(await m.tick(120))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http),
                                     base_url="http://metering",
                                     auth=await key_ring(service.pool)) as http:
            check = (await http.get("/runtime", params={"month": "2026-03"})).json()
            assert check == {"month": "2026-03", "vms_checked": 2,
                             "metered_seconds": 7200 + 2700, "actual_seconds": 7200 + 2700,
                             "over_metered": []}
            state = (await http.get(f"/vms/{stopped.vm_id}")).json()
            assert (state["running"], state["spec"]) == (False, SMALL_JSON)
            assert datetime.fromisoformat(state["closed_until"]) == at(120)
            assert (await http.get(f"/vms/{uuid4()}/runtime",
                                   params={"month": "2026-03"})).status_code == 404
            bad = await http.get(f"/vms/{running.vm_id}/runtime", params={"month": "2026-13"})
            assert bad.status_code == 422
            for beyond in ("9999-12", "0000-01"):  # months the calendar cannot hold
                for path in (f"/vms/{running.vm_id}/runtime", f"/vms/{running.vm_id}/usage",
                             "/runtime"):
                    response = await http.get(path, params={"month": beyond})
                    assert response.status_code == 422, (path, beyond, response.text)
            hours = (await http.get(f"/vms/{running.vm_id}/usage",
                                    params={"month": "2026-03"})).json()["hours"]
            assert [(h["revision"], h["seconds"]) for h in hours] == [(0, 3600), (0, 3600)]
