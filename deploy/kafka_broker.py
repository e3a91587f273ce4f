"""A single-node Apache Kafka broker (KRaft), its jars resolved from Maven Central.

Plaintext by default. With `scram_users`, clients must authenticate with SASL/SCRAM-SHA-512
(the users' credentials are written when the storage is formatted), and the StandardAuthorizer
lets each user do only what its ACLs grant (`grant`); the `admin` user is a super user."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from deploy.processes import spawn, stop, wait_for_port

ASSETS = Path(__file__).parent / "kafka"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO_ROOT / ".cache"


def resolve_jars(cache: Path = DEFAULT_CACHE) -> Path:
    """Download the broker's jars once into `cache/kafka-libs` (Maven's own cache beside it)."""
    libs = cache / "kafka-libs"
    # Named after the pom's content, so a changed pom resolves again.
    pom = hashlib.sha256((ASSETS / "pom.xml").read_bytes()).hexdigest()[:12]
    marker = libs / f".complete-{pom}"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None:
        raise RuntimeError("Maven (mvn) is needed to fetch the Kafka broker jars")
    libs.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mvn", "-q", "-B", "-f", str(ASSETS / "pom.xml"),
         f"-Dmaven.repo.local={cache / 'm2'}",
         "dependency:copy-dependencies", f"-DoutputDirectory={libs}"],
        check=True,
    )
    marker.touch()
    return libs


SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={log_dirs}
num.partitions=6
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
group.initial.rebalance.delay.ms=0
log.flush.interval.messages=9223372036854775807
"""

# Clients and the broker itself speak SASL/SCRAM on the client listener. The controller
# listener stays plaintext on the loopback interface: KRaft keeps SCRAM credentials in the
# metadata the controller serves, so the controller cannot use them itself, and its
# requests arrive as ANONYMOUS, which must therefore be a super user. A production cluster
# gives the controller listener SASL/PLAIN or mutual TLS (docs/security.md).
SASL_PROPERTIES = """\
listeners=SASL_PLAINTEXT://{listen_host}:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=SASL_PLAINTEXT://{advertised_host}:{port}
listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required \
username="{admin}" password="{admin_password}";
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:{admin};User:ANONYMOUS
allow.everyone.if.no.acl.found=false
"""


def sasl_properties(port: int | str, controller_port: int | str, log_dirs: Path | str,
                    admin: str, admin_password: str, *, listen_host: str = "127.0.0.1",
                    advertised_host: str = "127.0.0.1") -> str:
    """The secure broker's configuration; docker-compose's broker is made from it too
    (deploy/kafka_compose.py), with placeholders for what the container decides."""
    plain = SERVER_PROPERTIES.format(port=port, controller_port=controller_port,
                                     log_dirs=log_dirs)
    kept = [line for line in plain.splitlines() if not line.startswith((
        "listeners=", "advertised.listeners=", "listener.security.protocol.map=",
        "inter.broker.listener.name="))]
    return "\n".join(kept) + "\n" + SASL_PROPERTIES.format(
        port=port, controller_port=controller_port, admin=admin,
        admin_password=admin_password, listen_host=listen_host,
        advertised_host=advertised_host)


def cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass
class KafkaBroker:
    data_dir: Path
    port: int
    controller_port: int
    cache: Path = DEFAULT_CACHE
    heap: str = "768m"
    # user -> password; among them `admin`, the super user. None: plaintext, no ACLs.
    scram_users: dict[str, str] | None = None
    admin: str = "admin"
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.out"

    def _java(self, libs: Path, main: str, *args: str) -> list[str]:
        # C1 only (TieredStopAtLevel=1): this broker is started for a run on a machine it
        # shares with every service, and C2 spent the run's first minute compiling on a
        # core the services needed (19 s of broker CPU in a 30 s provisioning benchmark,
        # 11 s without it). A production broker keeps the default.
        return [
            "java", f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={ASSETS / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp", f"{libs}/*", main, *args,
        ]

    def start(self, timeout: float = 90.0) -> None:
        libs = resolve_jars(self.cache)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "server.properties"
        logs = self.data_dir / "logs"
        if self.scram_users is None:
            config.write_text(SERVER_PROPERTIES.format(
                port=self.port, controller_port=self.controller_port, log_dirs=logs))
        else:
            config.write_text(sasl_properties(self.port, self.controller_port, logs,
                                              self.admin, self.scram_users[self.admin]))
        if not (logs / "meta.properties").exists():
            scram = [f"--add-scram=SCRAM-SHA-512=[name={user},password={password}]"
                     for user, password in (self.scram_users or {}).items()]
            subprocess.run(
                self._java(libs, "kafka.tools.StorageTool", "format",
                           f"--cluster-id={cluster_id()}", "-c", str(config), *scram),
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        self.process = spawn(self._java(libs, "kafka.Kafka", str(config)), self.log_file)
        wait_for_port(self.port, self.process, self.log_file, timeout)

    def grant(self, rules: list[str]) -> None:
        """Create ACLs (lines of `shared.kafka_security.Acl.line()`) as the admin user."""
        assert self.scram_users is not None, "a plaintext broker has no ACLs"
        libs = resolve_jars(self.cache)
        stdin = "\n".join([self.scram_users[self.admin], *rules]) + "\n"
        subprocess.run(
            ["java", "-XX:TieredStopAtLevel=1", "-cp", f"{libs}/*",
             str(ASSETS / "AclSetup.java"), self.bootstrap_servers, self.admin],
            input=stdin.encode(), check=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, timeout=120)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, timeout=30)
            self.process = None
