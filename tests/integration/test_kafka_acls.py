"""Kafka locked down per service: a broker of this test's own, started with SASL/SCRAM and
the StandardAuthorizer, the users and ACLs of shared/kafka_security.py. A service holding
another service's credentials cannot publish on a topic it does not own; vCenter hooks may
write vcenter.events and nothing else; a service runs on its own credentials."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from deploy.kafka_broker import KafkaBroker
from deploy.processes import free_port
from services.vcenter_simulator.app import VcenterSimulator
from services.vcenter_simulator.domain import SimulatorConfig
from shared.contracts.vcenter import CreateVm
from shared.contracts.vm import VmSpec
from shared.kafka_admin import create_topics
from shared.kafka_security import ADMIN_USER, MECHANISM, acls, users
from shared.topics import (
    BILLING_DEBITS,
    PROVISIONING_REQUESTS,
    VCENTER_COMMANDS,
    VCENTER_EVENTS,
    WALLET_EVENTS,
)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KafkaBroker,
                                                                         dict[str, str]]]:
    passwords = {user: secrets.token_urlsafe(16) for user in [ADMIN_USER, *users()]}
    broker = KafkaBroker(Path(tmp_path_factory.mktemp("sasl-kafka")), free_port(),
                         free_port(), heap="512m", scram_users=passwords)
    broker.start()
    try:
        admin = options(ADMIN_USER, passwords)
        asyncio.run(create_topics(broker.bootstrap_servers, security=admin))
        broker.grant([rule.line() for rule in acls()])
        yield broker, passwords
    finally:
        broker.stop()


def options(user: str, passwords: dict[str, str]) -> dict[str, Any]:
    return {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": MECHANISM,
            "sasl_plain_username": user, "sasl_plain_password": passwords[user]}


async def publish(broker: KafkaBroker, security: dict[str, Any], topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers,
                                request_timeout_ms=10_000, **security)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b'{"probe": true}', key=b"k")
    finally:
        await producer.stop()


async def consume_one(broker: KafkaBroker, security: dict[str, Any], topic: str,
                      group: str, timeout: float = 20,
                      wanted: Callable[[dict[str, Any]], bool] = lambda m: True
                      ) -> dict[str, Any]:
    """The first message `wanted` (other tests' probes share this broker's topics)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap_servers,
                                group_id=group, auto_offset_reset="earliest", **security)
    await consumer.start()

    async def first() -> dict[str, Any]:
        async for record in consumer:
            message = dict(json.loads(record.value))
            if wanted(message):
                return message
        raise AssertionError("the consumer stopped")

    try:
        return await asyncio.wait_for(first(), timeout)
    finally:
        await consumer.stop()


@pytest.mark.parametrize(("user", "topic", "allowed"), [
    ("wallet", WALLET_EVENTS.name, True),
    ("metering", WALLET_EVENTS.name, False),  # metering's credentials, the wallet's topic
    ("billing", BILLING_DEBITS.name, True),
    ("provisioning", BILLING_DEBITS.name, False),
    ("vcenter-hooks", VCENTER_EVENTS.name, True),
    ("vcenter-hooks", WALLET_EVENTS.name, False),
    ("vcenter-hooks", VCENTER_COMMANDS.name, False),  # it reads commands, never writes them
    ("wallet", PROVISIONING_REQUESTS.name, False),
])
async def test_a_user_publishes_only_on_the_topics_it_produces(secured, user, topic, allowed):
    broker, passwords = secured
    if allowed:
        await publish(broker, options(user, passwords), topic)
    else:
        with pytest.raises(TopicAuthorizationFailedError):
            await publish(broker, options(user, passwords), topic)


async def test_a_user_reads_only_its_topics_in_its_own_groups(secured):
    broker, passwords = secured
    await publish(broker, options("wallet", passwords), WALLET_EVENTS.name)
    billing = options("billing", passwords)
    assert await consume_one(broker, billing, WALLET_EVENTS.name, "billing.wallet.events")
    with pytest.raises(GroupAuthorizationFailedError):
        await consume_one(broker, billing, WALLET_EVENTS.name, "provisioning.wallet.events")
    with pytest.raises((TopicAuthorizationFailedError, KafkaError)):
        await consume_one(broker, billing, PROVISIONING_REQUESTS.name,
                          "billing.provisioning.requests", timeout=10)


async def test_wrong_or_missing_credentials_are_refused(secured):
    broker, passwords = secured
    with pytest.raises(KafkaError):
        await publish(broker, {**options("wallet", passwords), "sasl_plain_password": "x"},
                      WALLET_EVENTS.name)
    with pytest.raises(KafkaError):
        await asyncio.wait_for(publish(broker, {}, WALLET_EVENTS.name), 15)


async def test_a_service_runs_on_its_own_credentials(secured, env):
    """The vCenter simulator consumes vcenter.commands and publishes vcenter.events as
    vcenter-hooks, through the same runtime every service uses."""
    broker, passwords = secured
    vm_id = uuid4()
    command = CreateVm(request_id=uuid4(), vm_id=vm_id,
                       organisation_id=uuid4(), wallet_id=uuid4(), name="acl-vm",
                       spec=VmSpec(tier="small", vcpu=1, ram_gb=2))
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers,
                                **options("provisioning", passwords))
    await producer.start()
    try:
        await producer.send_and_wait(VCENTER_COMMANDS.name, command.model_dump_json().encode(),
                                     key=str(vm_id).encode())
    finally:
        await producer.stop()

    settings = env.settings.model_copy(update={
        "kafka_bootstrap_servers": broker.bootstrap_servers, "topic_prefix": "",
        "group_prefix": "", "kafka_sasl_username": "vcenter-hooks",
        "kafka_sasl_password": passwords["vcenter-hooks"]})
    simulator = VcenterSimulator(settings, SimulatorConfig(create_delay_s=0))
    await simulator.start()
    try:
        event = await consume_one(broker, options("metering", passwords), VCENTER_EVENTS.name,
                                  "metering.vcenter.events", timeout=60,
                                  wanted=lambda m: m.get("vm_id") == str(vm_id))
        assert event["type"] == "vcenter.vm_created"
    finally:
        await simulator.stop()

