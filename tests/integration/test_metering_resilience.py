"""Metering when things go wrong or scale out: a restart between ticks, two instances in
one consumer group, and poison messages."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from uuid import uuid4

from services.metering.app import MeteringService, create_service
from shared.contracts.vcenter import VmCreateFailed, VmDeleted, VmPoweredOn, VmResizeFailed
from shared.topics import DEAD_LETTER, VCENTER_EVENTS
from tests.integration.test_metering_service import Metering, Vm, at, hour, hours_of, metering
from tests.kafka_helpers import KafkaProbe, settled


def assigned(service: MeteringService) -> set[int]:
    partitions: set[int] = set()
    for subscriber in service.broker.subscribers:
        consumer = getattr(subscriber, "consumer", None)
        if consumer is not None:
            partitions |= {tp.partition for tp in consumer.assignment()}
    return partitions


async def test_a_restart_between_two_ticks_states_each_hour_once(env, db):
    vms = [Vm() for _ in range(4)]
    async with KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        m = Metering(env, kafka)
        first = create_service(env.settings)
        await first.start()
        try:
            for vm in vms:
                await m.publish(vm.created(0), vm.on(30))
            await m.closed(await m.tick(60))
        finally:
            await first.stop()
        # Events and a tick while no metering runs; a new instance picks them up.
        await m.publish(vms[0].off(90))
        second = create_service(env.settings)
        await second.start()
        try:
            await m.closed(await m.tick(120))
        finally:
            await second.stop()
            await m.close()
    for vm in vms:
        usage = hours_of(m.usage(vm))
        expected = {(hour(0), 0): 1800, (hour(1), 0): 1800 if vm is vms[0] else 3600}
        assert {k: v["seconds"] for k, v in usage.items()} == expected
    assert await db.fetchval("SELECT count(*) FROM metering.usage_hours") == 8


async def test_two_instances_in_one_group_state_each_hour_exactly_once(env, db):
    vms = [Vm() for _ in range(24)]
    a, b = create_service(env.settings), create_service(env.settings)
    await a.start()
    await b.start()
    try:
        async with KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
            m = Metering(env, kafka)
            deadline = time.monotonic() + 30
            while not (assigned(a) and assigned(b)
                       and len(assigned(a) | assigned(b)) == VCENTER_EVENTS.partitions):
                assert time.monotonic() < deadline, "the group never shared the partitions"
                await asyncio.sleep(0.2)
            assert not assigned(a) & assigned(b)
            for vm in vms:
                await m.publish(vm.created(0), vm.on(0))
            await m.tick(60)
            await m.closed(await m.tick(120))
            # Two relays share one outbox, so a watermark may overtake usage by a moment.
            await m.read_until(lambda _: len({u["usage_id"] for u in m.usage()}) >= 48)
            await m.close()
        partitions = await db.fetch(
            "SELECT DISTINCT source_partition FROM metering.vms")
        assert {r["source_partition"] for r in partitions} & assigned(a)
        assert {r["source_partition"] for r in partitions} & assigned(b)
    finally:
        await a.stop()
        await b.stop()
    for vm in vms:
        usage = hours_of(m.usage(vm))  # fails on any hour stated twice
        assert {k: v["seconds"] for k, v in usage.items()} == {(hour(0), 0): 3600,
                                                               (hour(1), 0): 3600}
    assert await db.fetchval("SELECT count(*) FROM metering.usage_hours") == 2 * len(vms)


async def test_poison_messages_go_to_the_dead_letter_topic_and_metering_goes_on(env, db):
    good, deleted, created_later = Vm(), Vm(), Vm()
    events = env.topic(VCENTER_EVENTS.name)
    async with KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        m = Metering(env, kafka)
        service = create_service(env.settings)
        await service.start()
        try:
            await kafka.publish(events, "x", b"not json at all")
            negative = json.loads(good.created(0).model_dump_json())
            negative["spec"]["vcpu"] = -2
            await kafka.publish(events, good.vm_id, json.dumps(negative).encode())
            no_utc_time = json.loads(good.on(0).model_dump_json())
            no_utc_time["occurred_at"] = "0001-01-01T00:30:00+01:00"  # no UTC equivalent
            await kafka.publish(events, good.vm_id, json.dumps(no_utc_time).encode())
            unknown = uuid4()
            await kafka.publish(events, unknown, VmPoweredOn(vm_id=unknown, occurred_at=at(0)))
            await kafka.publish(events, unknown, VmCreateFailed(vm_id=unknown, reason="full",
                                                                occurred_at=at(0)))
            await m.publish(deleted.created(0), deleted.on(0),
                            VmDeleted(vm_id=deleted.vm_id, occurred_at=at(20)),
                            deleted.off(30),  # after deletion
                            created_later.created(30), created_later.off(10),  # before creation
                            VmResizeFailed(vm_id=created_later.vm_id, reason="no",
                                           occurred_at=at(40)),
                            created_later.created(50))  # created twice
            await m.publish(good.created(0), good.on(0))
            await m.closed(await m.tick(60))
            # An event keyed wrongly lands on another partition than the VM's others.
            home = await db.fetchval("SELECT source_partition FROM metering.vms WHERE vm_id = $1",
                                     good.vm_id)
            await kafka.publish(events, good.vm_id, good.off(70),
                                partition=(home + 1) % VCENTER_EVENTS.partitions)
            await settled(kafka, env.settings, "metering", [VCENTER_EVENTS],
                          database_url=env.database_url)
            letters = await kafka.read_to_end(env.topic(DEAD_LETTER.name))  # all there is
        finally:
            await service.stop()
            await m.close()
    reasons = sorted(letter["reason"] for letter in letters)
    assert len(reasons) == 8, reasons

    def one(text: str) -> dict[str, Any]:
        (found,) = [x for x in letters if text in x["reason"]]
        return found

    (garbage,) = [x for x in letters if x["payload"] == "not json at all"]
    assert garbage["reason"].startswith("invalid message")
    assert one("spec.vcpu")["reason"].startswith("invalid message")
    assert one("range of UTC times")["reason"].startswith("invalid message")
    assert str(unknown) in one("unknown VM")["reason"]
    assert one("after VM")["source_key"] == str(deleted.vm_id)
    assert "before VM" in one("before VM")["reason"]
    assert "already created" in one("already created")["reason"]
    assert f"lives on partition {home}" in one("lives on partition")["reason"]
    assert all(x["consumer"] == "metering" and x["source_topic"] == events for x in letters)
    # The consumer kept going: the good VM and the deleted one are metered.
    assert {k: v["seconds"] for k, v in hours_of(m.usage(good)).items()} == {(hour(0), 0): 3600}
    assert {k: v["seconds"] for k, v in hours_of(m.usage(deleted)).items()} == {
        (hour(0), 0): 1200}
    assert m.usage(created_later) == []


async def test_a_backlog_of_ticks_closes_in_bounded_transactions(env, db):
    vms = [Vm() for _ in range(5)]
    async with KafkaProbe(env.settings.kafka_bootstrap_servers) as kafka:
        m = Metering(env, kafka)
        for vm in vms:
            await m.publish(vm.created(0), vm.on(0))
        await m.publish(vms[0].off(150))
        await m.tick(240)  # four hours at once, before metering even starts
        service = create_service(env.settings)
        service.handlers.close_budget = 3  # at most 3 usage rows per transaction
        await service.start()
        try:
            await m.closed(at(240))
        finally:
            await service.stop()
            await m.close()
    for vm in vms:
        usage = hours_of(m.usage(vm))
        expected = {(hour(h), 0): 3600 for h in range(4)}
        if vm is vms[0]:
            expected = {(hour(0), 0): 3600, (hour(1), 0): 3600, (hour(2), 0): 1800}
        assert {k: v["seconds"] for k, v in usage.items()} == expected
    # Progress was committed (and announced) hour by hour on the way to the tick.
    progress = {m["up_to"] for m in m.output if m["type"] == "metering.watermark"}
    assert progress & {hour(1), hour(2), hour(3)}
    marks = await db.fetch("SELECT up_to, closed_until FROM metering.partitions")
    assert {(r["up_to"], r["closed_until"]) for r in marks} == {(at(240), at(240))}


async def test_closing_output_lost_between_commit_and_publish_is_published_again(env, db):
    """Closing output is published from memory after its transaction commits. Here that
    publication fails once, as if the process had stopped right after the commit: the
    batch is redelivered and the hours already stated are published from the usage rows,
    once each and unchanged."""
    vms = [Vm() for _ in range(3)]
    async with metering(env) as (service, m):
        publish = service.handlers.publish
        failures = []

        async def lost_once(rows: list[Any]) -> list[Any]:
            if not failures:
                failures.append(len(rows))
                raise RuntimeError("stopped between commit and publish")
            return await publish(rows)

        service.handlers.publish = lost_once  # type: ignore[method-assign]
        for vm in vms:
            await m.publish(vm.created(0), vm.on(0))
        await m.closed(await m.tick(60))
        assert failures, "the closing output never went through the failing publication"
        for vm in vms:
            assert {k: v["seconds"] for k, v in hours_of(m.usage(vm)).items()} == \
                {(hour(0), 0): 3600}
    assert await db.fetchval("SELECT count(*) FROM metering.usage_hours") == 3
    marks = await db.fetch("SELECT * FROM metering.partitions WHERE closed_until IS NOT NULL")
    assert marks and all(r["published_until"] == r["closed_until"]
                         and r["published_up_to"] == r["up_to"] for r in marks)
