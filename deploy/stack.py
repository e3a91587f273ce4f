"""The local stack: a real Kafka broker and a real PostgreSQL server, no Docker needed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deploy.kafka_broker import KafkaBroker
from deploy.postgres_server import PostgresServer
from deploy.processes import free_port


@dataclass
class LocalStack:
    root: Path
    kafka_port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    postgres_port: int = field(default_factory=free_port)
    durable: bool = True

    def __post_init__(self) -> None:
        self.kafka = KafkaBroker(self.root / "kafka", self.kafka_port, self.controller_port)
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

    def stop(self) -> None:
        self.kafka.stop()
        self.postgres.stop()
