"""`cloudwallet` command line: run a service, migrate, create topics, run the local stack."""

from __future__ import annotations

import asyncio
import importlib
import shutil

import typer
import uvicorn

from shared.logs import configure_logging
from shared.settings import get_settings

app = typer.Typer(help="cloudwallet: wallet, metering and billing services", no_args_is_help=True)

SERVICES = {
    "wallet": ("services.wallet.app", "wallet_http_port"),
    "provisioning": ("services.provisioning.app", "provisioning_http_port"),
    "metering": ("services.metering.app", "metering_http_port"),
    "billing": ("services.billing.app", "billing_http_port"),
    "vcenter-simulator": ("services.vcenter_simulator.app", "vcenter_simulator_http_port"),
}


def load_service(name: str):  # type: ignore[no-untyped-def]
    module_name, _ = SERVICES[name]
    return importlib.import_module(module_name).create_service(get_settings())


@app.command()
def serve(name: str = typer.Argument(..., help="|".join(SERVICES)),
          port: int | None = typer.Option(None, help="HTTP port (default from settings)"),
          host: str = typer.Option("127.0.0.1", help="Interface to listen on")) -> None:
    """Run one service: its Kafka consumers, outbox relay and HTTP API (health, metrics)."""
    if name not in SERVICES:
        raise typer.BadParameter(f"unknown service {name!r}; one of {', '.join(SERVICES)}")
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    service = load_service(name)
    http_port = port or getattr(settings, SERVICES[name][1])
    uvicorn.run(service.http, host=host, port=http_port, log_config=None,
                access_log=False)


@app.command()
def migrate() -> None:
    """Create the database if needed and apply all services' migrations."""
    from shared.db import migrate as run_migrations

    applied = asyncio.run(run_migrations(get_settings().database_url))
    typer.echo(f"applied {applied} migrations")


@app.command()
def setup() -> None:
    """Migrate the database and create the topics (what a deployment runs once)."""
    migrate()
    topics()


@app.command()
def topics() -> None:
    """Create every topic of the topic map that does not exist yet."""
    from shared.kafka_admin import create_topics

    settings = get_settings()
    names = asyncio.run(create_topics(settings.kafka_bootstrap_servers, settings.topic_prefix))
    typer.echo("\n".join(names))


if __name__ == "__main__":
    app()


USE_EXISTING = typer.Option(
    False, help="Use KAFKA_BOOTSTRAP_SERVERS/DATABASE_URL instead of starting servers")


@app.command()
def stack(use_existing: bool = USE_EXISTING) -> None:
    """Start Kafka, PostgreSQL and every service, and keep them up until Ctrl-C."""
    import signal

    from deploy.launcher import start_system

    configure_logging("INFO", json=False)
    system = start_system(get_settings(), use_existing=use_existing)
    typer.echo(f"kafka: {system.settings.kafka_bootstrap_servers}")
    typer.echo(f"database: {system.settings.database_url}")
    for name in system.processes:
        typer.echo(f"{name}: {system.url(name)} (health: {system.url(name)}/health)")
    typer.echo("up; Ctrl-C stops everything")
    try:
        signal.sigwait([signal.SIGINT, signal.SIGTERM])
    finally:
        system.stop()
        typer.echo("stopped")


@app.command()
def demo(use_existing: bool = USE_EXISTING,
         full: bool = typer.Option(False, help="Every company in the file for six months"),
         days: int | None = typer.Option(None, help="Simulated days (any length)"),
         companies: int | None = typer.Option(None, help="How many companies"),
         seed: int = typer.Option(14, help="The same seed gives the same scenario and money"),
         start: str = typer.Option("2026-07-01", help="First simulated day (UTC), past or future"),
         report: str = typer.Option(".data/demo/report", help="Report folder")) -> None:
    """Start the whole system, simulate JSE-listed companies' months through it, prove the
    money with the independent oracle, write the report, stop. Exits 1 on any difference."""
    import signal
    from datetime import UTC, datetime
    from pathlib import Path

    from deploy.demo import run_demo
    from deploy.launcher import DATA_DIR, start_system
    from deploy.sim.system import STOP, Stopped
    from deploy.simulation import SIZES, Outcome, simulation_settings

    configure_logging("WARNING", json=False)
    first_day = datetime.fromisoformat(start).replace(tzinfo=UTC)
    data_dir = DATA_DIR / "demo"
    if not use_existing:
        # Every run simulates its months from scratch: the state an earlier run left (its
        # clocks months ahead) would make this run's hours look long closed.
        shutil.rmtree(data_dir, ignore_errors=True)
    size = SIZES["full" if full else "demo"]
    days = days or size.days
    # Clock ticks are the one clock, and the scenario's rate card change is in force.
    settings = simulation_settings(get_settings(), first_day, days)
    system = start_system(settings, data_dir, use_existing=use_existing)

    async def simulate() -> Outcome:
        # Ctrl-C (or SIGTERM) tells every wait of the driver to give up at once: cancelling
        # the task alone is not enough, a client library may swallow the cancellation.
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, STOP.set)
        return await run_demo(system, days=days, companies=companies or size.companies,
                              seed=seed, start=first_day, report_dir=Path(report))

    try:
        outcome = asyncio.run(simulate())
    except (Stopped, KeyboardInterrupt):
        typer.echo("interrupted: stopping everything")
        raise typer.Exit(130) from None
    finally:
        system.stop()
    raise typer.Exit(0 if outcome.exact else 1)
