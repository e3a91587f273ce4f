"""Brings the whole system up on one machine: Kafka, PostgreSQL, topics, migrations and
every service as its own process; and takes it all down again."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any

import httpx

from deploy.processes import free_port, spawn, stop_all, tail
from deploy.stack import LocalStack
from shared.cli import RUNNABLE
from shared.db import migrate, with_database
from shared.kafka_admin import create_topics
from shared.kafka_security import client_options
from shared.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / ".data"



@dataclass
class RunningSystem:
    settings: Settings
    stack: LocalStack | None
    processes: dict[str, Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    # How each process was started (arguments, log, environment): `restart` starts it again.
    commands: dict[str, tuple[list[str], Path, dict[str, str]]] = field(default_factory=dict)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def restart(self, name: str) -> Popen[bytes]:
        """Start a process again with its own command and port (after it died or was
        killed); returns the new process, not yet healthy."""
        args, log, env = self.commands[name]
        self.processes[name] = spawn(args, log, cwd=REPO_ROOT, env=env)
        return self.processes[name]

    def stop(self) -> None:
        """All at once, so Ctrl-C takes seconds: every service is told to stop, then each
        gets what is left of a few seconds before it is killed."""
        stop_all(list(self.processes.values()))
        self.processes.clear()
        if self.stack is not None:
            self.stack.stop()


# The Kafka user each service process runs as on a secure broker (the topic map's names).
KAFKA_USERS = {"wallet": "wallet", "provisioning": "provisioning", "metering": "metering",
               "billing": "billing", "vcenter-simulator": "vcenter-hooks"}


# A second instance of a service is named `<service>#2` (same consumer groups, its own port).
INSTANCE_MARK = "#"


def service_of(process_name: str) -> str:
    return process_name.partition(INSTANCE_MARK)[0]


def start_system(settings: Settings, data_dir: Path = DATA_DIR, *,
                 use_existing: bool = False, secure_kafka: bool = False,
                 instances_per_service: int = 1) -> RunningSystem:
    """Start (or, with `use_existing`, connect to the configured) Kafka and PostgreSQL, then
    create topics, migrate and start each service process, waiting until each is healthy.
    `secure_kafka`: the local broker requires SASL/SCRAM, and each service runs as its own
    Kafka user within its ACLs. `instances_per_service`: how many processes of each service
    that consumes Kafka (the extra ones `<service>#<n>`, in the same consumer groups, on
    free HTTP ports); the portal runs once."""
    stack = None
    if not use_existing:
        stack = LocalStack(data_dir, kafka_port=_port(settings.kafka_bootstrap_servers),
                           postgres_port=_port_of_url(settings.database_url), durable=True,
                           secure_kafka=secure_kafka)
        stack.start()
        settings = settings.model_copy(update={
            "kafka_bootstrap_servers": stack.bootstrap_servers,
            "database_url": with_database(stack.database_url(), _db_name(settings.database_url)),
        })
    system = RunningSystem(settings, stack)
    try:
        admin = stack.kafka_options() if stack is not None else {}
        asyncio.run(_prepare(settings, admin))
        if stack is not None:
            stack.grant_acls(settings.topic_prefix, settings.group_prefix)
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
               "DATABASE_URL": settings.database_url, "TOPIC_PREFIX": settings.topic_prefix,
               "GROUP_PREFIX": settings.group_prefix, "EVENT_CLOCK": settings.event_clock,
               "RATE_CARDS": settings.rate_cards}
        local = "http://127.0.0.1:{}".format
        # The portal finds the services at the ports this launch gave them.
        env.update(PORTAL_WALLET_URL=local(settings.wallet_http_port),
                   PORTAL_PROVISIONING_URL=local(settings.provisioning_http_port),
                   PORTAL_BILLING_URL=local(settings.billing_http_port))
        for service, (_module, port_setting) in RUNNABLE.items():
            copies = instances_per_service if service in KAFKA_USERS else 1
            for copy in range(1, copies + 1):
                name = service if copy == 1 else f"{service}{INSTANCE_MARK}{copy}"
                port = getattr(settings, port_setting) if copy == 1 else free_port()
                system.ports[name] = port
                kafka_user = stack.kafka_options(KAFKA_USERS[service]) \
                    if secure_kafka and stack and service in KAFKA_USERS else {}
                system.commands[name] = (
                    [sys.executable, "-m", "shared.cli", "serve", service, "--port", str(port)],
                    data_dir / "logs" / f"{name}.log", {
                        **env, **({"KAFKA_SASL_USERNAME": kafka_user["sasl_plain_username"],
                                   "KAFKA_SASL_PASSWORD": kafka_user["sasl_plain_password"]}
                                  if kafka_user else {})})
                system.restart(name)
        for name in system.processes:
            _wait_healthy(name, system, data_dir)
    except BaseException:
        system.stop()
        raise
    return system


async def _prepare(settings: Settings, kafka_admin: dict[str, Any]) -> None:
    await migrate(settings.database_url)
    await create_topics(settings.kafka_bootstrap_servers, settings.topic_prefix,
                        security=kafka_admin or client_options(settings))


def _wait_healthy(name: str, system: RunningSystem, data_dir: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    log = system.commands[name][1]
    while time.monotonic() < deadline:
        if system.processes[name].poll() is not None:
            raise RuntimeError(f"{name} exited; its log ends:\n{tail(log)}")
        try:
            if httpx.get(f"{system.url(name)}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{name} not healthy after {timeout}s; its log ends:\n{tail(log)}")


def _port(bootstrap: str) -> int:
    return int(bootstrap.split(",")[0].rsplit(":", 1)[1])


def _port_of_url(url: str) -> int:
    from urllib.parse import urlsplit

    return urlsplit(url).port or 5432


def _db_name(url: str) -> str:
    from shared.db import database_name

    return database_name(url)
