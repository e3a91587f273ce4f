"""Infrastructure for benchmarks: the servers named by KAFKA_BOOTSTRAP_SERVERS and
DATABASE_URL, or a local stack started for the run; a fresh database and topic prefix."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from subprocess import Popen

import psutil

from deploy.processes import free_port, spawn, stop, wait_for_port
from shared.db import drop_database, migrate, with_database
from shared.kafka_admin import create_topics, delete_topics
from shared.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent


@asynccontextmanager
async def bench_settings(**overrides: object) -> AsyncIterator[Settings]:
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    server = os.environ.get("DATABASE_URL")
    stack = None
    if not (kafka and server):
        from deploy.stack import LocalStack

        stack = LocalStack(Path(tempfile.mkdtemp(prefix="cloudwallet-bench-")), durable=True)
        stack.start()
        kafka, server = stack.bootstrap_servers, stack.database_url()
    tag = uuid.uuid4().hex[:8]
    url = with_database(server, f"bench_{tag}")
    try:
        await migrate(url)
        await create_topics(kafka, f"b{tag}.")
        fields: dict[str, object] = {
            "kafka_bootstrap_servers": kafka, "database_url": url, "topic_prefix": f"b{tag}.",
            "group_prefix": f"b{tag}.", "log_json": False, "log_level": "WARNING",
        }
        fields.update(overrides)
        yield Settings(**fields)  # type: ignore[arg-type]
    finally:
        if os.environ.get("BENCH_KEEP_DATABASE"):  # to look at it afterwards (EXPLAIN, sizes)
            print(f"kept database {url}", file=sys.stderr)
        else:
            await drop_database(url)
        await delete_topics(kafka, f"b{tag}.")
        if stack is not None:
            stack.stop()
            shutil.rmtree(stack.root, ignore_errors=True)


class ServiceProcesses:
    """Services as `cloudwallet serve` processes on a run's database and topics, so each
    has its own core to use and its CPU time can be read apart from the load generator's."""

    def __init__(self, settings: Settings, names: tuple[str, ...], logs: Path | None = None,
                 profile: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.logs = logs or Path(tempfile.mkdtemp(prefix="cloudwallet-bench-"))
        self.profile = profile  # services run under cProfile: `profiles()` writes them
        self.ports = {name: free_port() for name in names}
        self.processes: dict[str, Popen[bytes]] = {}

    def start(self) -> None:
        s = self.settings
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
               "DATABASE_URL": s.database_url, "TOPIC_PREFIX": s.topic_prefix,
               "GROUP_PREFIX": s.group_prefix, "LOG_LEVEL": "WARNING", "LOG_JSON": "false",
               "CONSUMER_BATCH_TIMEOUT_MS": str(s.consumer_batch_timeout_ms),
               "OUTBOX_POLL_INTERVAL_S": str(s.outbox_poll_interval_s)}
        for name, port in self.ports.items():
            log = self.logs / f"{name}.log"
            profiling = ["--profile", str(self.profile_path(name))] if name in self.profile else []
            self.processes[name] = process = spawn(
                [sys.executable, "-m", "shared.cli", "serve", name, "--port", str(port),
                 *profiling], log, env=env, cwd=REPO_ROOT)
            wait_for_port(port, process, log)

    def stop(self) -> None:
        for process in self.processes.values():
            stop(process)

    def profile_path(self, name: str) -> Path:
        return self.logs / f"{name}.prof"

    def profiles(self, timeout_s: float = 10.0) -> dict[str, Path]:
        """Have each profiled service write its statistics so far (SIGUSR1); their files."""
        written = {}
        for name in self.profile:
            path = self.profile_path(name)
            path.unlink(missing_ok=True)
            self.processes[name].send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + timeout_s
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            written[name] = path
        return written

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) each server process, and this one, has used so far."""
        used = {}
        for name, process in self.processes.items():
            times = psutil.Process(process.pid).cpu_times()
            used[name] = times.user + times.system
        used["bench"] = sum(psutil.Process().cpu_times()[:2])
        # A stack this run started (a broker, PostgreSQL and its backends) is ours to count.
        services = {p.pid for p in self.processes.values()}
        for child in psutil.Process().children(recursive=True):
            try:
                if child.pid in services or child.ppid() in services:
                    continue
                kind = {"java": "kafka", "postgres": "postgres"}.get(child.name())
                if kind is not None:
                    used[kind] = used.get(kind, 0.0) + sum(child.cpu_times()[:2])
            except psutil.NoSuchProcess:
                continue
        return used

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"
