"""The simulation page: the last run's report (a folder with `report.json` and PNG plots,
written by `cloudwallet demo`), and on a development machine a button that starts a small
run and shows its output as it goes.

Starting runs is off unless PORTAL_SIMULATION_RUNS=true: a run starts a whole stack of its
own, which has no place next to a production portal."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from fastapi import HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from services.portal.clients import ServiceError
from services.portal.routes import Checked, User

if TYPE_CHECKING:
    from collections.abc import Callable

    from services.portal.app import PortalService

PLOT_NAME = re.compile(r"^[a-z0-9_]{1,60}\.png$")


def read_report(folder: Path) -> dict[str, Any] | None:
    """The report document and its plots' names, or None when no run wrote one."""
    path = folder / "report.json"
    try:
        document: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    document["plots"] = sorted(p.name for p in folder.glob("*.png") if PLOT_NAME.match(p.name))
    return document


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    log: Path
    output: IO[bytes]

    def view(self, lines: int = 15) -> dict[str, Any]:
        code = self.process.poll()
        if code is not None and not self.output.closed:
            self.output.close()
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        # Progress bars redraw with carriage returns: show each line's last state.
        shown = [line.rsplit("\r", 1)[-1] for line in text.splitlines()][-lines:]
        return {"running": code is None, "exit_code": code, "output": "\n".join(shown)}


class SimulationRunner:
    """At most one run at a time, its output in a log file the page polls."""

    def __init__(self, command: str, log: Path) -> None:
        self.command = (shlex.split(command) if command.strip() else
                        [sys.executable, "-m", "shared.cli", "demo", "--days", "3"])
        self.log_path = log
        self.run: Run | None = None

    def start(self) -> bool:
        if self.run is not None and self.run.process.poll() is None:
            return False
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        output = self.log_path.open("wb")
        process = subprocess.Popen(self.command, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        self.run = Run(process, self.log_path, output)
        return True

    def view(self) -> dict[str, Any]:
        if self.run is None:
            return {"running": False, "exit_code": None, "output": ""}
        return self.run.view()

    def stop(self) -> None:
        if self.run is not None and self.run.process.poll() is None:
            self.run.process.terminate()


def register_simulation_routes(portal: PortalService, page: Callable[..., Any],
                               back: Callable[..., Response]) -> None:
    app = portal.http
    folder = Path(portal.portal.simulation_report_dir)
    runner = (SimulationRunner(portal.portal.simulation_command,
                               folder.parent / "portal-simulation.log")
              if portal.portal.simulation_runs else None)
    portal.simulation = runner

    @app.get("/simulation")
    async def simulation(request: Request, user: User) -> Response:
        return page(request, "simulation.html", user, status=None,
                    report=read_report(folder), runs=runner is not None,
                    may_run=runner is not None and user.role == "operator",
                    run=runner.view() if runner else None)

    @app.get("/simulation/plots/{name}")
    async def plot(name: str, user: User) -> Response:
        path = folder / name
        if not PLOT_NAME.match(name) or not path.is_file():
            raise HTTPException(404, "no such plot")
        return FileResponse(path, media_type="image/png")

    @app.post("/simulation/runs", dependencies=[Checked])
    async def start_run(request: Request, user: User) -> Response:
        if runner is None or user.role != "operator":
            raise ServiceError(403, "starting simulation runs is off here, or not yours "
                                    "to do (operators, on a development stack)")
        started = runner.start()
        return back(request, "/simulation", "A small simulation run started." if started
                    else "A run is already going.")

    @app.get("/simulation/runs/current")
    async def current_run(user: User) -> JSONResponse:
        return JSONResponse(runner.view() if runner else {"running": False})
