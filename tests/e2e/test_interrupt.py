"""Ctrl-C during `cloudwallet demo` with a stack of its own: the run stops within a few
seconds with exit code 130, every process it started (Kafka's broker, PostgreSQL, each
service) is gone, and the durable stack it leaves starts again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from deploy.processes import free_port
from deploy.stack import LocalStack

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
# A correctness bound, not a speed target: "within a few seconds", with room for a machine
# shared with other runs.
STOP_BOUND_S = 15


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid` (pid -> command), from /proc."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(
                b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                found[child] = commands.get(child, "")
                frontier.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has stopped; only its parent's wait is left


@pytest.mark.parametrize(("to_group", "when"), [(True, "simulating"), (False, "simulating"),
                                               (True, "starting")],
                         ids=["ctrl-c", "kill-int", "ctrl-c-while-starting"])
def test_ctrl_c_stops_the_demo_and_everything_it_started_within_seconds(tmp_path, to_group,
                                                                         when):
    """`ctrl-c`: SIGINT to the foreground process group, as a terminal sends it (every
    process of the job gets it); `kill-int`: SIGINT to the launcher alone, which must then
    stop what it started itself; `ctrl-c-while-starting`: once the broker runs, before the
    services are up."""
    kafka_port, postgres_port = free_port(), free_port()
    env = {**os.environ,
           # its own broker and database on free ports, never the shared ones
           "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka_port}",
           "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{postgres_port}/postgres",
           **{f"{name}_HTTP_PORT": str(free_port()) for name in (
               "WALLET", "PROVISIONING", "METERING", "BILLING", "VCENTER_SIMULATOR",
               "PORTAL")}}
    data_dir = tmp_path / "data"
    demo = subprocess.Popen(
        [str(Path(sys.executable).with_name("cloudwallet")), "demo", "--companies", "8",
         "--days", "62", "--data-dir", str(data_dir), "--report", str(tmp_path / "report")],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)  # its own process group, as a terminal's foreground job
    output: list[str] = []
    simulating = threading.Event()  # "scenario: ..." is printed once the services are up

    def read() -> None:
        assert demo.stdout is not None
        for raw in iter(demo.stdout.readline, b""):
            line = raw.decode(errors="replace")
            output.append(line)
            if line.startswith("scenario:"):
                simulating.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240

        def reached() -> bool:
            if when == "starting":
                return "kafka.Kafka" in " ".join(descendants(demo.pid).values())
            return simulating.is_set()

        while not reached() and demo.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert reached(), f"the demo never reached {when}:\n" + "".join(output)
        if when == "simulating":
            time.sleep(3)  # into the simulated days
        assert demo.poll() is None, "".join(output)
        started = descendants(demo.pid)
        commands = " ".join(started.values())
        assert "kafka.Kafka" in commands and "bin/postgres" in commands, started
        if when == "simulating":
            assert commands.count("shared.cli serve") == 6, started

        began = time.monotonic()
        if to_group:
            os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        else:
            demo.send_signal(signal.SIGINT)
        code = demo.wait(STOP_BOUND_S)
        took = time.monotonic() - began
        print(f"stopped in {took:.1f} s")
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    reader.join(5)
    assert code == 130, "".join(output)
    survivors = {pid: command[-160:] for pid, command in started.items() if alive(pid)}
    assert survivors == {}, f"left running after {took:.1f} s: {survivors}"
    assert "interrupted: stopping everything" in "".join(output)

    # The durable stack it stopped starts again on its data (the broker's log and
    # PostgreSQL's cluster are consistent), and stops.
    stack = LocalStack(data_dir, kafka_port=kafka_port, postgres_port=postgres_port)
    try:
        stack.start()
    finally:
        stack.stop()
