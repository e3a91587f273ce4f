"""PostgreSQL plumbing: pools, database creation and migrations (yoyo, plain SQL files).

Each service owns one schema and a `migrations/` folder next to its code. Migration ids
carry the service's name (`wallet_0001_...`), so all services share one yoyo history.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

SERVICES_DIR = Path(__file__).resolve().parent.parent / "services"
# Schemas every service shares (the API keys of shared/auth.py).
SHARED_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SERVICE_NAMES = ("wallet", "provisioning", "metering", "billing")


def migration_dirs(services: tuple[str, ...] = SERVICE_NAMES) -> list[Path]:
    return [SHARED_MIGRATIONS] + [SERVICES_DIR / name / "migrations" for name in services
                                  if (SERVICES_DIR / name / "migrations").is_dir()]


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "postgres"


async def ensure_database(url: str, template: str | None = None) -> None:
    name = database_name(url)
    admin = await asyncpg.connect(with_database(url, "postgres"))
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            clause = f' TEMPLATE "{template}"' if template else ""
            await admin.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await admin.close()


async def drop_database(url: str) -> None:
    name = database_name(url)
    admin = await asyncpg.connect(with_database(url, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _apply_migrations(url: str, services: tuple[str, ...]) -> int:
    from yoyo import get_backend, read_migrations

    backend = get_backend(url.replace("postgresql://", "postgresql+psycopg://", 1))
    migrations = read_migrations(*[str(p) for p in migration_dirs(services)])
    try:
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
    finally:
        backend.connection.close()
    return len(pending)


async def migrate(url: str, services: tuple[str, ...] = SERVICE_NAMES) -> int:
    """Create the database if needed and apply every pending migration; returns how many."""
    await ensure_database(url)
    return await asyncio.to_thread(_apply_migrations, url, services)


# asyncpg prepares every statement, and PostgreSQL switches a prepared statement to one
# generic plan after five runs. A plan made while a table was empty (a fresh outbox, say)
# then stays after it has grown to a million rows, until autovacuum happens to look: the
# outbox relay's delete became a sequential scan per batch. Our statements run once per
# batch, so planning each run with its real parameters and table sizes costs next to nothing.
PLANNING = {"plan_cache_mode": "force_custom_plan"}


async def create_pool(url: str, max_size: int = 10, *, durable_commits: bool = True
                      ) -> asyncpg.Pool:
    """`durable_commits=False` is for work whose loss in a crash only repeats it, such as the
    outbox relay's deletes (a lost delete republishes rows consumers deduplicate): those
    commits do not wait for the WAL to reach the disk."""
    settings = {**PLANNING, **({} if durable_commits else {"synchronous_commit": "off"})}
    pool = await asyncpg.create_pool(url, min_size=1, max_size=max_size,
                                     server_settings=settings, reset=_end_open_transaction)
    assert pool is not None
    return pool


async def _end_open_transaction(conn: asyncpg.Connection) -> None:
    """asyncpg's default reset sends `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL` on every release: a round trip per transaction, the provisioning saga's most
    frequent statement. Our sessions hold none of that state (advisory locks are transaction
    scoped, settings are connection parameters, no cursors or listeners outlive a
    transaction), so only a transaction left open needs undoing."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


# --- a service's event-time clock: the latest clock tick it saw (one row in its schema) ------

async def stored_clock(conn: asyncpg.Connection, schema: str) -> datetime | None:
    now: datetime | None = await conn.fetchval(f"SELECT now FROM {schema}.clock WHERE id = 1")
    return now


async def advance_stored_clock(conn: asyncpg.Connection, schema: str, at: datetime) -> None:
    """Clocks only move forward: an older tick delivered late changes nothing."""
    await conn.execute(
        f"""INSERT INTO {schema}.clock (id, now) VALUES (1, $1)
            ON CONFLICT (id) DO UPDATE SET now = greatest({schema}.clock.now, excluded.now)""", at)
