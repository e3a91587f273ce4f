"""`cloudwallet` command line: run a service, migrate, create topics, run the local stack."""

from __future__ import annotations

import asyncio
import importlib

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
    "vcenter-simulator": ("services.vcenter_simulator.app", None),
}


def load_service(name: str):  # type: ignore[no-untyped-def]
    module_name, _ = SERVICES[name]
    return importlib.import_module(module_name).create_service(get_settings())


@app.command()
def serve(name: str = typer.Argument(..., help="|".join(SERVICES)),
          port: int | None = typer.Option(None, help="HTTP port (default from settings)")) -> None:
    """Run one service: its Kafka consumers, outbox relay and HTTP API (health, metrics)."""
    if name not in SERVICES:
        raise typer.BadParameter(f"unknown service {name!r}; one of {', '.join(SERVICES)}")
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    service = load_service(name)
    port_setting = SERVICES[name][1]
    http_port = port or (getattr(settings, port_setting) if port_setting else 8105)
    uvicorn.run(service.http, host="127.0.0.1", port=http_port, log_config=None,
                access_log=False)


@app.command()
def migrate() -> None:
    """Create the database if needed and apply all services' migrations."""
    from shared.db import migrate as run_migrations

    applied = asyncio.run(run_migrations(get_settings().database_url))
    typer.echo(f"applied {applied} migrations")


@app.command()
def topics() -> None:
    """Create every topic of the topic map that does not exist yet."""
    from shared.kafka_admin import create_topics

    settings = get_settings()
    names = asyncio.run(create_topics(settings.kafka_bootstrap_servers, settings.topic_prefix))
    typer.echo("\n".join(names))


if __name__ == "__main__":
    app()
