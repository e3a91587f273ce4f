"""Child processes that die with their parent.

Every server the launcher starts gets PR_SET_PDEATHSIG, so a killed test run or launcher
leaves no broker or database behind, even on SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int = signal.SIGTERM, uid: int | None = None,
                     gid: int | None = None) -> Callable[[], None]:
    def prepare() -> None:
        # A broker keeps several files open per partition; give servers all the system allows.
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (1 << 20, 1 << 20))  # root may raise it
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        # Changing credentials clears the parent-death signal, so switch user first.
        if gid is not None:
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig)
        # The parent may already be gone between fork and prctl.
        if os.getppid() == 1:
            os._exit(1)

    return prepare


def spawn(args: Sequence[str], log_file: Path, *, env: dict[str, str] | None = None,
          cwd: Path | None = None, uid: int | None = None, gid: int | None = None,
          death_signal: int = signal.SIGTERM) -> subprocess.Popen[bytes]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_file, "ab")
    try:
        return subprocess.Popen(
            list(args), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, preexec_fn=_die_with_parent(death_signal, uid, gid),
        )
    finally:
        log.close()


def stop(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def stop_all(processes: Sequence[subprocess.Popen[bytes]], timeout: float = 5.0) -> None:
    """Terminate every process at once, then kill those still running after `timeout`."""
    running = [p for p in processes if p.poll() is None]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + timeout
    for process in running:
        try:
            process.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], log_file: Path,
                  timeout: float = 60.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}; see {log_file}:\n"
                               + tail(log_file))
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s; see {log_file}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
