"""The local stack: a real Kafka broker and a real PostgreSQL server, no Docker needed.

`secure_kafka`: the broker requires SASL/SCRAM and enforces the ACLs of
shared/kafka_security.py, one user per service; the users' passwords are made once and kept
in `<root>/kafka/credentials.json` (the broker's storage holds them from its first start)."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.kafka_broker import KafkaBroker
from deploy.postgres_server import PostgresServer
from deploy.processes import free_port
from shared.kafka_security import ADMIN_USER, MECHANISM, acls, users


@dataclass
class LocalStack:
    root: Path
    kafka_port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    postgres_port: int = field(default_factory=free_port)
    durable: bool = True
    secure_kafka: bool = False

    def __post_init__(self) -> None:
        self.kafka = KafkaBroker(self.root / "kafka", self.kafka_port, self.controller_port,
                                 scram_users=self._credentials() if self.secure_kafka
                                 else None)
        self.postgres = PostgresServer(self.root / "postgres" / "data", self.postgres_port,
                                       durable=self.durable)

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka.bootstrap_servers

    def database_url(self, database: str = "postgres") -> str:
        return self.postgres.url(database)

    def start(self) -> None:
        try:
            self.postgres.start()
            self.kafka.start()
        except BaseException:
            self.stop()
            raise

    def kafka_options(self, user: str = ADMIN_USER) -> dict[str, Any]:
        """aiokafka's options for one of the secure broker's users (none when plaintext)."""
        if self.kafka.scram_users is None:
            return {}
        return {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": MECHANISM,
                "sasl_plain_username": user,
                "sasl_plain_password": self.kafka.scram_users[user]}

    def grant_acls(self, topic_prefix: str = "", group_prefix: str = "") -> None:
        if self.kafka.scram_users is not None:
            self.kafka.grant([rule.line() for rule in acls(topic_prefix, group_prefix)])

    def _credentials(self) -> dict[str, str]:
        path = self.root / "kafka" / "credentials.json"
        if path.exists():
            known: dict[str, str] = json.loads(path.read_text())
            return known
        made = {user: secrets.token_urlsafe(18) for user in [ADMIN_USER, *users()]}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(made, indent=2))
        path.chmod(0o600)
        return made

    def stop(self) -> None:
        self.kafka.stop()
        self.postgres.stop()
