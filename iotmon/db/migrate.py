"""Schema migrations: ``infra/db/migrations/NNN_name.sql`` applied in order, once each.

Each migration runs in its own transaction together with its row in ``schema_migrations``,
so a failure leaves the schema at the previous version.  Re-running is harmless: applied
migrations are skipped, and one whose file changed after it was applied is an error (write a
new migration instead of editing an old one).  Concurrent runs are serialised by an advisory
lock.  The application never creates tables at start-up; this is the only way in.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from iotmon.db import rollups
from iotmon.db.roles import grant_access
from iotmon.settings import DatabaseSettings

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The migrations could not be applied as written (bad file, edited history, SQL error)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql_text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def default_migrations_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "infra" / "db" / "migrations"


def discover(directory: Path) -> list[Migration]:
    """Migrations in ``directory`` sorted by version; MigrationError on a bad name or gap."""
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migration versions must be 1..N without gaps, got {versions}")
    return found


def _policy_settings(settings: DatabaseSettings) -> dict[str, str]:
    return {
        "iotmon.raw_chunk_interval": settings.raw_chunk_interval,
        "iotmon.aggregates_chunk_interval": settings.aggregates_chunk_interval,
        "iotmon.raw_compress_after": settings.raw_compress_after,
        "iotmon.raw_retention": settings.raw_retention,
        "iotmon.aggregates_retention": settings.aggregates_retention,
    }


NOT_PRELOADED = (
    "TimescaleDB is installed on the server but not preloaded, so it cannot be enabled: add "
    "timescaledb to shared_preload_libraries in postgresql.conf and restart PostgreSQL "
    "(`iotmon stack up` does both for the local stack), then run `iotmon migrate` again; "
    "going on with plain PostgreSQL tables"
)


def _enable_timescaledb(settings: DatabaseSettings) -> bool:
    """Create (or update) the extension in the database when the server has it and the
    settings allow it; True when it is enabled.  Uses a connection of its own: a failed
    ``CREATE EXTENSION`` may end the session, and ``ALTER EXTENSION ... UPDATE`` must be the
    first statement of one."""
    if settings.timescaledb == "off":
        return False
    with psycopg.connect(settings.url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT default_version, installed_version FROM pg_available_extensions "
            "WHERE name = 'timescaledb'"
        ).fetchone()
        try:
            loaded = conn.execute("SHOW shared_preload_libraries").fetchone()
        except psycopg.errors.InsufficientPrivilege:
            # A least-privilege owner (iotmon db roles) may not read it.  An extension that
            # exists was created with the library preloaded (CREATE EXTENSION refuses
            # otherwise); one that does not cannot be created by this role anyway.
            loaded = ("timescaledb",) if row is not None and row[1] is not None else ("",)
    preload = str(loaded[0]) if loaded else ""
    if row is None:
        return False
    default, installed = row
    if "timescaledb" not in preload:
        log.warning("%s", NOT_PRELOADED)
        return False
    statement = (
        "CREATE EXTENSION IF NOT EXISTS timescaledb"
        if installed is None
        else "ALTER EXTENSION timescaledb UPDATE"
        if installed != default
        else None
    )
    if statement is not None:
        try:
            with psycopg.connect(settings.url, autocommit=True) as conn:
                conn.execute(statement)
        except psycopg.Error as exc:
            log.warning("TimescaleDB could not be enabled (%s): %s", statement, exc)
            return installed is not None
        log.info("TimescaleDB %s: %s", default, statement)
    return True


def migrate(settings: DatabaseSettings, directory: Path | None = None) -> list[int]:
    """Apply pending migrations to ``settings.db_schema``; returns the versions applied now."""
    migrations = discover(directory or default_migrations_dir())
    schema = settings.db_schema
    applied_now: list[int] = []
    timescale = _enable_timescaledb(settings)
    with psycopg.connect(settings.url, autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: log.info("%s", diag.message_primary))
        log.info(
            "database %s: %s",
            conn.info.dbname,
            "TimescaleDB enabled" if timescale else "plain PostgreSQL (no TimescaleDB)",
        )
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        # Extension functions (TimescaleDB's) live in public.
        conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(schema)))
        conn.execute("SELECT pg_advisory_lock(hashtext('iotmon.migrate.' || %s))", (schema,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {
                int(v): str(c)
                for v, c in conn.execute("SELECT version, checksum FROM schema_migrations")
            }
            for m in migrations:
                if m.version in done:
                    if done[m.version] != m.checksum:
                        raise MigrationError(
                            f"migration {m.path.name} changed after it was applied to schema "
                            f"{schema}; add a new migration instead"
                        )
                    continue
                log.info("applying migration %s to schema %s", m.path.name, schema)
                try:
                    with conn.transaction():
                        for key, value in _policy_settings(settings).items():
                            conn.execute("SELECT set_config(%s, %s, true)", (key, value))
                        conn.execute(m.sql_text.encode())
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name, checksum) "
                            "VALUES (%s, %s, %s)",
                            (m.version, m.name, m.checksum),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(f"migration {m.path.name} failed: {exc}") from exc
                applied_now.append(m.version)
            if timescale:
                _keep_time_series_storage(conn, settings)
            granted = grant_access(conn, schema, settings.roles_prefix)
            if granted:
                log.info("schema %s: table rights of %s", schema, ", ".join(granted))
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext('iotmon.migrate.' || %s))", (schema,))
    return applied_now


def _keep_time_series_storage(
    conn: psycopg.Connection[tuple[object, ...]], settings: DatabaseSettings
) -> None:
    """Hypertables and policies in place (migration 011), also for a schema created on
    plain PostgreSQL before TimescaleDB was enabled."""
    p = _policy_settings(settings)
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT ensure_time_series_storage(%s::interval, %s::interval, %s, %s, %s)",
                (
                    p["iotmon.raw_chunk_interval"],
                    p["iotmon.aggregates_chunk_interval"],
                    p["iotmon.raw_compress_after"],
                    p["iotmon.raw_retention"],
                    p["iotmon.aggregates_retention"],
                ),
            ).fetchone()
        log.info("schema %s: %s", settings.db_schema, row[0] if row else "")
        with conn.transaction():
            row = conn.execute(
                "SELECT ensure_rollups(%s::interval)", (settings.rollup_refresh_every,)
            ).fetchone()
        done = str(row[0]) if row else ""
        if settings.aggregates_retention:
            # The floor rollup is kept as long as the hourly rows it sums, so that the
            # rollups above both lose the same days (a refresh over a dropped range drops
            # what it had materialized there).
            added = conn.execute(
                "SELECT add_retention_policy('floor_hourly', %s::interval, if_not_exists => true)",
                (settings.aggregates_retention,),
            ).fetchone()
            if added and added[0] != -1:
                done += f"; floor_hourly kept {settings.aggregates_retention}"
        log.info("schema %s: %s", settings.db_schema, done)
        held = conn.execute("SELECT EXISTS (SELECT 1 FROM hourly_aggregates)").fetchone()
        if "created" in done and held and held[0]:
            # Rollups of a schema that already holds data: materialized now rather than
            # computed at query time until the first policy run.
            rollups.refresh(conn, patience_s=600.0)
    except psycopg.Error as exc:
        raise MigrationError(f"converting to TimescaleDB hypertables failed: {exc}") from exc


def current_version(settings: DatabaseSettings) -> int:
    """The highest applied migration of the schema (0 when none)."""
    with psycopg.connect(settings.url) as conn:
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL",
            (f"{settings.db_schema}.schema_migrations",),
        ).fetchone()
        if not row or not row[0]:
            return 0
        q = sql.SQL("SELECT coalesce(max(version), 0) FROM {}.schema_migrations").format(
            sql.Identifier(settings.db_schema)
        )
        version = conn.execute(q).fetchone()
        return int(version[0]) if version else 0
