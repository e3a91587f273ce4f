"""`cloudwallet` command line: run a service, migrate, create topics, manage API keys, run
the local stack."""

from __future__ import annotations

import asyncio
import cProfile
import gc
import importlib
import shutil
import signal
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import typer
import uvicorn

from shared.logs import configure_logging
from shared.settings import get_settings

app = typer.Typer(help="cloudwallet: wallet, metering and billing services", no_args_is_help=True)
keys = typer.Typer(help="API keys: create (shown once), list, revoke", no_args_is_help=True)
app.add_typer(keys, name="keys")
deadletters = typer.Typer(help="Dead letters: list them with their reasons, replay chosen ones",
                          no_args_is_help=True)
app.add_typer(deadletters, name="deadletters")

SERVICES = {
    "wallet": ("services.wallet.app", "wallet_http_port"),
    "provisioning": ("services.provisioning.app", "provisioning_http_port"),
    "metering": ("services.metering.app", "metering_http_port"),
    "billing": ("services.billing.app", "billing_http_port"),
    "vcenter-simulator": ("services.vcenter_simulator.app", "vcenter_simulator_http_port"),
}
# Web pages for people, served like a service but with no Kafka, database or API of their
# own (so no OpenAPI document): they call the services above over HTTP.
PAGES = {
    "portal": ("services.portal.app", "portal_http_port"),
}
RUNNABLE = {**SERVICES, **PAGES}

# Young objects collected every this many container allocations instead of CPython's 700: a
# consumer batch allocates tens of thousands (2,000 records, their models, rows and messages),
# all freed by reference counting, and the default made the cyclic collector run dozens of
# times per batch over them; measured, a third of billing's Python CPU per usage event.
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Once a service is built: what start-up created (modules, schemas, validators) lives as
    long as the process, so it is moved out of the collector's sight (`gc.freeze`), and young
    collections run per batch rather than per few hundred objects."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def load_service(name: str):  # type: ignore[no-untyped-def]
    module_name, _ = RUNNABLE[name]
    return importlib.import_module(module_name).create_service(get_settings())


@app.command()
def serve(name: str = typer.Argument(..., help="|".join(RUNNABLE)),
          port: int | None = typer.Option(None, help="HTTP port (default from settings)"),
          host: str = typer.Option("127.0.0.1", help="Interface to listen on"),
          profile: Path | None = typer.Option(
              None, help="Profile the process (cProfile) and write the statistics to this "
                         "file on SIGUSR1 (benchmarks: where the CPU goes)")) -> None:
    """Run one service: its Kafka consumers, outbox relay and HTTP API (health, metrics)."""
    if name not in RUNNABLE:
        raise typer.BadParameter(f"unknown service {name!r}; one of {', '.join(RUNNABLE)}")
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    service = load_service(name)
    tune_gc()
    http_port = port or getattr(settings, RUNNABLE[name][1])
    if profile is not None:
        profile_on_signal(profile)
    uvicorn.run(service.http, host=host, port=http_port, log_config=None,
                access_log=False)


def profile_on_signal(path: Path) -> None:
    """Profile from now on; each SIGUSR1 writes the statistics so far to `path` (a stopping
    service may be killed before it could write them at exit)."""
    profiler = cProfile.Profile()

    def write(*_: object) -> None:
        partial = path.with_name(path.name + ".partial")
        profiler.dump_stats(partial)  # stops the profiler: resume it
        profiler.enable()
        partial.replace(path)  # whole, or not there yet

    signal.signal(signal.SIGUSR1, write)
    profiler.enable()


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
    from shared.kafka_security import client_options

    settings = get_settings()
    names = asyncio.run(create_topics(settings.kafka_bootstrap_servers, settings.topic_prefix,
                                      security=client_options(settings)))
    typer.echo("\n".join(names))


async def _with_database(work):  # type: ignore[no-untyped-def]
    import asyncpg

    conn = await asyncpg.connect(get_settings().database_url)
    try:
        return await work(conn)
    finally:
        await conn.close()


@keys.command("create")
def create_key(role: str = typer.Argument(..., help="organisation|reseller|operator|integration"),
               name: str = typer.Option(..., help="Who or what uses the key"),
               organisation: UUID | None = typer.Option(
                   None, help="The organisation (organisation and reseller keys)"),
               days: int | None = typer.Option(None, min=1, help="Expires after this many days"),
               ) -> None:
    """Create a key and print it: it is shown this once, only its hash is stored."""
    from shared.api_keys import issue_key
    from shared.auth import Role

    try:
        parsed = Role(role)
    except ValueError:
        raise typer.BadParameter(f"role is one of {', '.join(r.value for r in Role)}") from None
    try:
        issued = asyncio.run(_with_database(lambda conn: issue_key(
            conn, name=name, role=parsed, organisation_id=organisation,
            valid_for=timedelta(days=days) if days else None)))
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    typer.echo(f"key id: {issued.key_id}", err=True)
    typer.echo(issued.token)


@keys.command("list")
def list_api_keys() -> None:
    """Every key: id, role, organisation, created, expires, revoked (never the key)."""
    from shared.api_keys import list_keys

    for row in asyncio.run(_with_database(list_keys)):
        typer.echo("\t".join(str(row[c]) if row[c] is not None else "-" for c in (
            "key_id", "role", "organisation_id", "name", "created_at", "expires_at",
            "revoked_at")))


@keys.command("revoke")
def revoke(key_id: str = typer.Argument(..., help="The key id (the part after cw_)")) -> None:
    """Revoke a key: every service refuses it from its next request on."""
    from shared.api_keys import revoke_key

    if not asyncio.run(_with_database(lambda conn: revoke_key(conn, key_id))):
        typer.echo(f"no active key {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


@deadletters.command("list")
def list_dead_letters(
        topic: str | None = typer.Option(None, help="Only letters from this source topic "
                                                    "(with or without the topic prefix)"),
        width: int = typer.Option(120, min=20, help="Cut reasons to this many characters"),
) -> None:
    """Every dead letter (of a topic): id, when, consumer, topic/partition@offset, key,
    reason; then how many per reason."""
    from shared.deadletter_kafka import read_letters
    from shared.deadletters import of_topic, reasons_count, summary_line

    settings = get_settings()
    letters = of_topic(asyncio.run(read_letters(settings)), topic, settings.topic_prefix)
    for letter in letters:
        typer.echo(summary_line(letter, width))
    typer.echo(f"{len(letters)} dead letters", err=True)
    for reason, count in reasons_count(letters).items():
        typer.echo(f"{count:>6}  {reason}", err=True)


@deadletters.command("replay")
def replay_dead_letters(
        ids: list[str] = typer.Argument(..., help="Letter ids (or unique prefixes of 8+)"),
) -> None:
    """Send the chosen letters' original records again, each to its topic and partition
    with its key. Consumers are idempotent: what was booked before is not booked again."""
    from shared.deadletter_kafka import read_letters, send_again
    from shared.deadletters import NotReplayable, SelectionError, choose, replay_of

    settings = get_settings()
    try:
        replays = [replay_of(letter) for letter in choose(asyncio.run(read_letters(settings)),
                                                           ids)]
    except (SelectionError, NotReplayable) as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
    asyncio.run(send_again(settings, replays))
    for r in replays:
        typer.echo(f"replayed {r.letter_id} to {r.topic}/{r.partition}")


if __name__ == "__main__":
    app()


USE_EXISTING = typer.Option(
    False, help="Use KAFKA_BOOTSTRAP_SERVERS/DATABASE_URL instead of starting servers")


@app.command()
def stack(use_existing: bool = USE_EXISTING,
          secure_kafka: bool = typer.Option(
              False, help="Kafka requires SASL/SCRAM, each service its own user and ACLs")
          ) -> None:
    """Start Kafka, PostgreSQL and every service, and keep them up until Ctrl-C."""
    import signal

    from deploy.launcher import start_system

    configure_logging("INFO", json=False)
    system = start_system(get_settings(), use_existing=use_existing, secure_kafka=secure_kafka)
    typer.echo(f"kafka: {system.settings.kafka_bootstrap_servers}")
    if system.stack is not None and secure_kafka:
        typer.echo(f"kafka users: {system.stack.root / 'kafka' / 'credentials.json'}")
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
         report: str = typer.Option(".data/demo/report", help="Report folder"),
         data_dir: str | None = typer.Option(
             None, help="The self-started stack's folder (default .data/demo)")) -> None:
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
    stack_dir = Path(data_dir) if data_dir else DATA_DIR / "demo"
    if not use_existing:
        # Every run simulates its months from scratch: the state an earlier run left (its
        # clocks months ahead) would make this run's hours look long closed.
        shutil.rmtree(stack_dir, ignore_errors=True)
    size = SIZES["full" if full else "demo"]
    days = days or size.days
    # Clock ticks are the one clock, and the scenario's rate card change is in force.
    settings = simulation_settings(get_settings(), first_day, days)
    system = None

    async def simulate() -> Outcome:
        # Ctrl-C (or SIGTERM) tells every wait of the driver to give up at once: cancelling
        # the task alone is not enough, a client library may swallow the cancellation.
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, STOP.set)
        assert system is not None
        return await run_demo(system, days=days, companies=companies or size.companies,
                              seed=seed, start=first_day, report_dir=Path(report))

    try:
        # Ctrl-C while the stack starts: start_system stops what it had started, then here.
        system = start_system(settings, stack_dir, use_existing=use_existing)
        outcome = asyncio.run(simulate())
    except (Stopped, KeyboardInterrupt):
        typer.echo("interrupted: stopping everything")
        raise typer.Exit(130) from None
    finally:
        # A second Ctrl-C must not cut the stop short and leave a server behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if system is not None:
            system.stop()
    raise typer.Exit(0 if outcome.exact else 1)


@app.command()
def chaos(companies: int = typer.Option(24, help="How many companies"),
          days: int = typer.Option(75, help="Simulated days"),
          seed: int = typer.Option(17, help="Seeds the scenario and the fault plan"),
          faults: int = typer.Option(14, help="Faults to inject (at least one kill per "
                                              "service, a broker and a PostgreSQL restart, "
                                              "a pause)"),
          start: str = typer.Option("2026-07-01", help="First simulated day (UTC)"),
          report: str = typer.Option(".data/chaos/report", help="Report folder")) -> None:
    """The simulation under faults, on its own Kafka and PostgreSQL: two instances of each
    consuming service, instances killed and restarted, the broker and PostgreSQL restarted,
    an instance paused past its session timeout; the oracle must still agree to the cent.
    The last line: faults=<n> lost=<n> duplicated=<n> oracle=<exact|differs>; exits 1
    unless nothing was lost or duplicated and the oracle agrees."""
    from datetime import UTC, datetime
    from pathlib import Path

    from deploy.chaos import main
    from deploy.launcher import DATA_DIR

    configure_logging("WARNING", json=False)
    raise typer.Exit(main(companies, days, seed, faults,
                          datetime.fromisoformat(start).replace(tzinfo=UTC),
                          DATA_DIR / "chaos", Path(report)))
