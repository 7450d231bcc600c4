"""Least-privilege PostgreSQL roles: migrations own, sinks write, the API reads and acts.

``iotmon db roles`` (run once by the database's superuser) creates three LOGIN roles with
SCRAM passwords and what they need at the database level:

``<prefix>_migrator``
    Owns the schema and every table in it (runs ``iotmon migrate``); may create schemas in
    the database.  Never used by a running component.
``<prefix>_sink``
    Ingest and the sinks: reads every table but the subscriptions and the notification log
    (personal data), writes the time series (readings, hourly
    aggregates, latest readings, floor rollup, alerts and their events) and registers
    sensors seen for the first time.  Cannot change thresholds, subscriptions or the schema.
``<prefix>_api``
    The API: reads every table, acts on alerts (acknowledge, resolve: those columns only),
    edits thresholds,
    subscriptions and master data.  Cannot write readings or aggregates, nor the schema.

The table grants are given by the owner at the end of every ``iotmon migrate`` (so new
tables get them too), from :data:`WRITES`: one table of what each role may change.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

# Beyond SELECT on every table of the schema.  Triggers and functions run with the rights
# of the role that fires them: moving a location (the API) recomputes floor_hourly rows.
WRITES: dict[str, dict[str, tuple[str, ...]]] = {
    "sink": {
        "readings": ("INSERT", "UPDATE"),
        "hourly_aggregates": ("INSERT", "UPDATE"),
        "latest_readings": ("INSERT", "UPDATE"),
        "floor_hourly": ("INSERT", "UPDATE", "DELETE"),
        "alerts": ("INSERT", "UPDATE"),
        "alert_events": ("INSERT",),
        "locations": ("INSERT",),  # automatic registration: inserts, never overwrites
        "sensors": ("INSERT",),
    },
    "api": {
        # Acknowledge and resolve: those columns only, never the measured values or levels.
        "alerts": (
            "UPDATE (acknowledged_at, acknowledged_by, ack_note, state, resolved_at,"
            " resolved_by, resolve_note)",
        ),
        "thresholds": ("INSERT", "UPDATE", "DELETE"),
        "alert_subscriptions": ("INSERT", "UPDATE", "DELETE"),
        "locations": ("INSERT", "UPDATE", "DELETE"),
        "sensors": ("INSERT", "UPDATE", "DELETE"),
        "latest_readings": ("DELETE",),  # an unregistered sensor leaves the realtime view
        # The notifier logs in as the API's role (it reads the subscriptions too).
        "notifications": ("INSERT", "UPDATE"),
        # Silences are ended early by moving ends_at, never deleted (the record stays).
        "silences": ("INSERT", "UPDATE"),
        "floor_hourly": ("INSERT", "UPDATE", "DELETE"),
    },
}
KINDS = ("migrator", "sink", "api")
# Personal data (names, e-mail addresses, phone numbers, webhook URLs): the API's alone.
PRIVATE: dict[str, tuple[str, ...]] = {"sink": ("alert_subscriptions", "notifications", "silences")}


def role_names(prefix: str) -> dict[str, str]:
    return {kind: f"{prefix}_{kind}" for kind in KINDS}


def _exists(conn: psycopg.Connection[Any], role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def create_roles(
    conn: psycopg.Connection[Any], prefix: str, passwords: dict[str, str], schema: str
) -> dict[str, str]:
    """Create (or re-key) the roles on a superuser's autocommit connection; give the
    migrator the schema.  Returns kind -> role name."""
    names = role_names(prefix)
    database = conn.info.dbname
    for kind, role in names.items():
        verb = "ALTER" if _exists(conn, role) else "CREATE"
        conn.execute(
            sql.SQL(
                "{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD {}"
            ).format(sql.SQL(verb), sql.Identifier(role), sql.Literal(passwords[kind]))
        )
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(database), sql.Identifier(role)
            )
        )
    migrator = sql.Identifier(names["migrator"])
    conn.execute(
        sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(database), migrator)
    )
    conn.execute(
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
            sql.Identifier(schema), migrator
        )
    )
    if schema == "public":  # owned by the database owner: the migrator may create in it
        conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(migrator))
    else:
        conn.execute(
            sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(schema), migrator)
        )
    # TimescaleDB is created by a superuser (it is not a trusted extension); migrations
    # then find it in place.
    available = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    if available:
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    return names


def grant_access(conn: psycopg.Connection[Any], schema: str, prefix: str) -> list[str]:
    """Give the sink and API roles (those that exist) their rights on ``schema``'s tables;
    run by the owner after migrations.  Returns the roles granted to."""
    names = role_names(prefix)
    granted = []
    s = sql.Identifier(schema)
    tables = {
        str(r[0])
        for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
        ).fetchall()
    }
    for kind in ("sink", "api"):
        role = names[kind]
        if not _exists(conn, role):
            continue
        r = sql.Identifier(role)
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, r))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(s, r))
        for table in PRIVATE.get(kind, ()):
            if table in tables:
                conn.execute(
                    sql.SQL("REVOKE SELECT ON {}.{} FROM {}").format(s, sql.Identifier(table), r)
                )
        conn.execute(
            sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(s, r)
        )
        for table, privileges in WRITES[kind].items():
            if table not in tables:
                continue
            conn.execute(
                sql.SQL("GRANT {} ON {}.{} TO {}").format(
                    sql.SQL(", ").join(sql.SQL(p) for p in privileges),
                    s,
                    sql.Identifier(table),
                    r,
                )
            )
        granted.append(role)
    return granted


def drop_roles(conn: psycopg.Connection[Any], prefix: str) -> None:
    """Remove the roles and what they own or were granted (for tests and uninstalls)."""
    for role in role_names(prefix).values():
        if _exists(conn, role):
            conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
