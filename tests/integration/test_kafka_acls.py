"""Kafka locked down per service: a broker of this test's own, started with SASL/SCRAM and
the StandardAuthorizer, the users and ACLs of shared/kafka_security.py. A service holding
another service's credentials cannot publish on a topic it does not own; vCenter hooks may
write vcenter.events and nothing else; a service runs on its own credentials.

Every test runs twice: against the local stack's secure broker (deploy/kafka_broker.py), and
against a broker set up by docker-compose's own scripts (deploy/kafka/compose/broker.sh and
acls.sh), run here with the same Kafka jars standing in for the image's /opt/kafka/bin."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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

from deploy.kafka_broker import ASSETS, KafkaBroker, resolve_jars
from deploy.kafka_compose import COMPOSE_DIR, password_variable
from deploy.processes import free_port, spawn, stop, wait_for_port
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


@dataclass
class Broker:
    bootstrap_servers: str


@pytest.fixture(scope="module", params=["local-stack", "compose-scripts"])
def secured(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Broker, dict[str, str]]]:
    passwords = {user: secrets.token_urlsafe(16) for user in [ADMIN_USER, *users()]}
    root = Path(tmp_path_factory.mktemp("sasl-kafka"))
    if request.param == "local-stack":
        broker = KafkaBroker(root, free_port(), free_port(), heap="512m",
                             scram_users=passwords)
        broker.start()
        try:
            admin = options(ADMIN_USER, passwords)
            asyncio.run(create_topics(broker.bootstrap_servers, security=admin))
            broker.grant([rule.line() for rule in acls()])
            yield Broker(broker.bootstrap_servers), passwords
        finally:
            broker.stop()
    else:
        yield from compose_broker(root, passwords)


def compose_broker(root: Path, passwords: dict[str, str]
                   ) -> Iterator[tuple[Broker, dict[str, str]]]:
    """docker-compose's broker.sh and acls.sh, as its containers run them."""
    bin_dir = kafka_bin(root / "bin")
    port, controller_port = free_port(), free_port()
    env = {"PATH": os.environ["PATH"], "KAFKA_BIN": str(bin_dir),
           "KAFKA_DATA": str(root / "data"), "KAFKA_CONFIG": str(root / "server.properties"),
           "KAFKA_LISTEN_HOST": "127.0.0.1", "KAFKA_ADVERTISED_HOST": "127.0.0.1",
           "KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(controller_port),
           **{password_variable(user): password for user, password in passwords.items()}}
    log = root / "broker.out"
    process = spawn(["sh", str(COMPOSE_DIR / "broker.sh")], log, env=env)
    try:
        wait_for_port(port, process, log, timeout=120)
        bootstrap = f"127.0.0.1:{port}"
        asyncio.run(create_topics(bootstrap, security=options(ADMIN_USER, passwords)))
        granted = subprocess.run(
            ["sh", str(COMPOSE_DIR / "acls.sh")], capture_output=True, text=True, timeout=300,
            env={**env, "KAFKA_BOOTSTRAP": bootstrap,
                 "KAFKA_ADMIN_CONFIG": str(root / "admin.properties")})
        assert granted.returncode == 0, granted.stderr
        assert granted.stdout.strip() == f"granted {len(acls())} ACLs"
        yield Broker(bootstrap), passwords
    finally:
        stop(process)


def kafka_bin(folder: Path) -> Path:
    """The three tools of the image's /opt/kafka/bin that the scripts use, on this machine's
    broker jars."""
    libs = resolve_jars()
    folder.mkdir(parents=True)
    for script, main in {"kafka-storage.sh": "kafka.tools.StorageTool",
                         "kafka-server-start.sh": "kafka.Kafka",
                         "kafka-acls.sh": "org.apache.kafka.tools.AclCommand"}.items():
        path = folder / script
        path.write_text(
            "#!/bin/sh\n"
            f'exec java -Xmx512m -XX:TieredStopAtLevel=1 -Dkafka.logs.dir="{folder}" '
            f'-Dlog4j2.configurationFile="{ASSETS / "log4j2.properties"}" '
            f'-cp "{libs}/*" {main} "$@"\n')
        path.chmod(0o755)
    return folder


def options(user: str, passwords: dict[str, str]) -> dict[str, Any]:
    return {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": MECHANISM,
            "sasl_plain_username": user, "sasl_plain_password": passwords[user]}


async def publish(broker: Broker, security: dict[str, Any], topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers,
                                request_timeout_ms=10_000, **security)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b'{"probe": true}', key=b"k")
    finally:
        await producer.stop()


async def consume_one(broker: Broker, security: dict[str, Any], topic: str,
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

