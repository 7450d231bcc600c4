"""Migrations on the real PostgreSQL: all of them, twice, and protection of history."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from iotmon.db.migrate import MigrationError, current_version, default_migrations_dir, migrate
from iotmon.settings import DatabaseSettings

pytestmark = pytest.mark.integration

TABLES = {
    "locations",
    "sensors",
    "thresholds",
    "readings",
    "latest_readings",
    "hourly_aggregates",
    "floor_hourly",
    "alerts",
    "alert_events",
    "alert_subscriptions",
    "notifications",
    "schema_migrations",
}


def _tables(db: DatabaseSettings) -> set[str]:
    with psycopg.connect(db.url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (db.db_schema,),
        ).fetchall()
    return {r[0] for r in rows}


def test_all_migrations_apply_to_an_empty_schema_twice(empty_schema: DatabaseSettings) -> None:
    count = len(list(default_migrations_dir().glob("*.sql")))
    assert current_version(empty_schema) == 0
    assert migrate(empty_schema) == list(range(1, count + 1))
    assert _tables(empty_schema) >= TABLES
    assert migrate(empty_schema) == []
    assert current_version(empty_schema) == count


def test_time_columns_are_timestamptz(db: DatabaseSettings) -> None:
    with psycopg.connect(db.url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND (column_name LIKE '%%_dt' OR column_name LIKE '%%_at' "
            "OR column_name LIKE '%%_time' OR column_name = 'hour_start')",
            (db.db_schema,),
        ).fetchall()
    assert rows
    assert {r[2] for r in rows} == {"timestamp with time zone"}, rows


def test_storage_matches_the_server(db: DatabaseSettings) -> None:
    """Hypertables with TimescaleDB, BRIN indexes on plain PostgreSQL."""
    with psycopg.connect(db.url) as conn:
        timescale = conn.execute(
            "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone()
        if timescale and timescale[0]:
            hyper = conn.execute(
                "SELECT hypertable_name FROM timescaledb_information.hypertables "
                "WHERE hypertable_schema = %s",
                (db.db_schema,),
            ).fetchall()
            assert {h[0] for h in hyper} == {"readings", "hourly_aggregates", "floor_hourly"}
        else:
            brin = conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND indexdef LIKE "
                "'%%USING brin%%'",
                (db.db_schema,),
            ).fetchall()
            assert {b[0] for b in brin} == {"readings_time_brin", "hourly_aggregates_time_brin"}


def test_threshold_bounds_are_enforced_by_the_schema(db: DatabaseSettings) -> None:
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO thresholds (threshold_type, level, min_value, max_value) "
                "VALUES ('pcv_temperature', 'yellow', 33, 31)"
            )


def test_an_edited_migration_is_refused(empty_schema: DatabaseSettings, tmp_path: Path) -> None:
    copy = tmp_path / "migrations"
    shutil.copytree(default_migrations_dir(), copy)
    migrate(empty_schema, copy)
    first = sorted(copy.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(empty_schema, copy)


def test_a_failing_migration_leaves_the_previous_version(
    empty_schema: DatabaseSettings, tmp_path: Path
) -> None:
    copy = tmp_path / "migrations"
    shutil.copytree(default_migrations_dir(), copy)
    count = len(list(copy.glob("*.sql")))
    (copy / f"{count + 1:03d}_broken.sql").write_text(
        "CREATE TABLE ok_table (x int);\nSELECT * FROM no_such_table;\n"
    )
    with pytest.raises(MigrationError, match="no_such_table"):
        migrate(empty_schema, copy)
    assert current_version(empty_schema) == count
    assert "ok_table" not in _tables(empty_schema)
