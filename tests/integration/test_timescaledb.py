"""TimescaleDB on the real server: hypertables, the upgrade from plain tables, compressed
chunks with late readings, and retention.

Where the server has no TimescaleDB these tests check the plain-PostgreSQL layout or skip;
``IOTMON_TEST_TIMESCALEDB=required`` (set by ``make test``) turns a missing extension into a
failure, so that the suite cannot pass on plain PostgreSQL by mistake.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from psycopg import sql

from api.app import create_app
from iotmon.db import rollups
from iotmon.db.migrate import migrate
from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.masterdata import MasterData, import_master_data
from schemas.master import Location, Sensor
from schemas.readings import Reading
from stream_apps.sinks.main import build
from stream_apps.sinks.runner import SinkMetrics
from tests.ground_truth import hours_ago
from tests.helpers import wait_for
from tests.integration.test_worker_poison import SENSORS, good_readings, reading
from tests.pipeline import Pipeline

pytestmark = pytest.mark.integration

KST = ZoneInfo("Asia/Seoul")
REQUIRED = os.environ.get("IOTMON_TEST_TIMESCALEDB") == "required"


def extension_version(db: DatabaseSettings) -> str | None:
    with psycopg.connect(db.url) as conn:
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
        found = row.fetchone()
    return str(found[0]) if found else None


def needs_timescaledb(db: DatabaseSettings) -> str:
    version = extension_version(db)
    if version is None:
        if REQUIRED:
            pytest.fail("TimescaleDB is not enabled in the test database")
        pytest.skip("TimescaleDB is not enabled in this database")
    return version


def hypertables(db: DatabaseSettings) -> set[str]:
    with psycopg.connect(db.url) as conn:
        rows = conn.execute(
            "SELECT hypertable_name FROM timescaledb_information.hypertables"
            " WHERE hypertable_schema = %s",
            (db.db_schema,),
        ).fetchall()
    return {str(r[0]) for r in rows}


def query(db: DatabaseSettings, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(db.db_schema)))
        cursor = conn.execute(statement.encode(), params)
        return cursor.fetchall() if cursor.description else []


def test_time_series_tables_are_hypertables_whenever_the_extension_is_present(
    db: DatabaseSettings,
) -> None:
    version = extension_version(db)
    if REQUIRED:
        assert version is not None, "make test runs on TimescaleDB"
    if version is None:
        indexes = {
            r[0]
            for r in query(
                db, "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (db.db_schema,)
            )
        }
        assert {"readings_time_brin", "hourly_aggregates_time_brin"} <= indexes
        return
    print(f"TimescaleDB {version} enabled; schema {db.db_schema}")
    assert hypertables(db) == {"readings", "hourly_aggregates", "floor_hourly"}
    jobs = {
        (r[0], r[1])
        for r in query(
            db,
            "SELECT hypertable_name, proc_name FROM timescaledb_information.jobs"
            " WHERE hypertable_schema = %s",
            (db.db_schema,),
        )
    }
    # Compression and retention of raw readings; the daily and monthly rollups, each with
    # its refresh policy.
    refresh = "policy_refresh_continuous_aggregate"
    assert jobs == {
        ("readings", "policy_compression"),
        ("readings", "policy_retention"),
        *((view, refresh) for view in ("loc_daily", "loc_monthly", "floor_daily", "floor_monthly")),
    }
    every = query(
        db,
        "SELECT DISTINCT schedule_interval FROM timescaledb_information.jobs"
        " WHERE hypertable_schema = %s AND proc_name = %s",
        (db.db_schema, refresh),
    )
    assert every == [(timedelta(minutes=15),)]
    # A second run changes nothing.
    assert migrate(db) == []
    assert hypertables(db) == {"readings", "hourly_aggregates", "floor_hourly"}


# --- a schema created on plain PostgreSQL, then TimescaleDB ---------------------------


@pytest.fixture
def scratch_db(stack: Settings, test_id: str) -> Iterator[DatabaseSettings]:
    """A database of this test (no extension in it yet), dropped afterwards."""
    name = f"iotmon_test_{test_id}"
    admin = psycopg.conninfo.make_conninfo(stack.db.url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(stack.db.url, dbname=name)
    yield stack.db.model_copy(update={"url": url, "db_schema": f"test_{test_id}"})
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def plant() -> MasterData:
    return MasterData(
        [
            Location(loc_id=s[-4:], factory="SinPyeong", building="MX-1", floor=1, area="Line")
            for s in SENSORS
        ],
        [Sensor(sensor_id=s, loc_id=s[-4:]) for s in SENSORS],
    )


class Stored:
    """The pipeline with a readings sink too, on one database."""

    def __init__(
        self, stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, test_id: str, tmp: Path
    ) -> None:
        import_master_data(db, kafka, plant())
        self.db = db
        self.pipeline = Pipeline(stack, kafka, db, test_id, tmp)
        settings = stack.model_copy(
            update={
                "kafka": kafka,
                "db": db,
                "sink": stack.sink.model_copy(update={"group_prefix": f"raw-{test_id}"}),
            }
        )
        self.readings_sink = build(settings, "readings", SinkMetrics(CollectorRegistry()))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.readings_sink.run, args=(self.stop,))
        self.thread.start()
        self.pipeline.worker()
        self.pipeline.wait_ready()

    def finals(self) -> dict[tuple[str, datetime], tuple[int, str, str]]:
        rows = query(
            self.db,
            "SELECT sensor_id, hour_start, temperature_count, temperature_max,"
            " round(temperature_sum / temperature_count, 2) FROM hourly_aggregates"
            " WHERE is_final AND sensor_id LIKE 'TEMPIOT-%%'",
        )
        return {(r[0], r[1]): (r[2], str(r[3]), str(r[4])) for r in rows}

    def close(self) -> None:
        self.pipeline.close()
        self.stop.set()
        self.thread.join(30)
        self.readings_sink.consumer.close()


def expected(readings: list[Reading]) -> dict[tuple[str, datetime], tuple[int, str, str]]:
    hours: dict[tuple[str, datetime], list[Decimal]] = {}
    for r in readings:
        hour = r.capture_dt.replace(minute=0, second=0, microsecond=0)
        hours.setdefault((r.sensor_id, hour), []).append(Decimal(str(r.temperature)))
    cent = Decimal("0.01")
    return {
        k: (
            len(v),
            str(max(v).quantize(cent)),
            str((sum(v, Decimal(0)) / len(v)).quantize(cent, ROUND_HALF_UP)),
        )
        for k, v in hours.items()
    }


def test_a_plain_schema_becomes_hypertables_with_its_data_and_stays_exact(
    stack: Settings,
    kafka: KafkaSettings,
    scratch_db: DatabaseSettings,
    test_id: str,
    tmp_path: Path,
) -> None:
    plain = scratch_db.model_copy(update={"timescaledb": "off"})
    migrate(plain)
    assert extension_version(plain) is None
    stored = Stored(stack, kafka, plain, test_id, tmp_path)
    try:
        before = good_readings(hours_ago(6))
        stored.pipeline.send(before)
        wait_for(lambda: stored.finals() == expected(before), 90, "the finals on plain tables")
        rows = "SELECT * FROM readings WHERE sensor_id LIKE 'TEMPIOT-%%' ORDER BY 1, 2"
        count = "SELECT count(*) FROM readings WHERE sensor_id LIKE 'TEMPIOT-%%'"
        wait_for(lambda: query(plain, count)[0][0] == len(before), 30, "the raw readings")
        rows_before = query(plain, rows)
        aggregates_before = query(plain, "SELECT * FROM hourly_aggregates ORDER BY 1, 2")

        # TimescaleDB appears: the next migrate converts, with the rows, and again is a no-op.
        on = scratch_db  # timescaledb: auto
        version = needs_timescaledb_after(on)
        assert hypertables(on) == {"readings", "hourly_aggregates", "floor_hourly"}, version
        assert query(on, rows) == rows_before
        assert query(on, "SELECT * FROM hourly_aggregates ORDER BY 1, 2") == aggregates_before
        brin = query(on, "SELECT indexname FROM pg_indexes WHERE indexname LIKE %s", ("%brin",))
        assert brin == []
        assert migrate(on) == []

        # The running pipeline goes on, exact, on the hypertables.
        after = good_readings(hours_ago(3))
        stored.pipeline.send(after)
        wait_for(
            lambda: stored.finals() == expected(before + after), 90, "the finals on hypertables"
        )
        wait_for(
            lambda: query(on, count)[0][0] == len(before + after),
            30,
            "every raw reading",
        )
    finally:
        stored.close()


def needs_timescaledb_after(db: DatabaseSettings) -> str:
    """Migrate ``db`` with TimescaleDB allowed; its version (skip/fail when the server has
    none, as :func:`needs_timescaledb`)."""
    migrate(db)
    return needs_timescaledb(db)


# --- compressed chunks and late readings ----------------------------------------------


def test_a_late_reading_for_a_compressed_day_is_stored_and_queries_still_answer(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, test_id: str, tmp_path: Path
) -> None:
    needs_timescaledb(db)
    stored = Stored(stack, kafka, db, test_id, tmp_path)
    try:
        # A day chunk before the current one, after the probes' time (two days ago), which
        # sets the partitions' event time.
        start = hours_ago(40)
        good = good_readings(start)
        stored.pipeline.send(good)
        wait_for(lambda: stored.finals() == expected(good), 90, "the finals of that day")
        count = "SELECT count(*) FROM readings WHERE sensor_id LIKE 'TEMPIOT-%%'"
        wait_for(lambda: query(db, count)[0][0] == len(good), 30, "raw rows")
        compressed = query(
            db,
            "SELECT compress_chunk(c)"
            " FROM show_chunks('readings', older_than => now() - interval '12 hours') c",
        )
        assert compressed, "the day's chunk was compressed"
        assert query(
            db,
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_schema = %s"
            " AND hypertable_name = 'readings' AND is_compressed",
            (db.db_schema,),
        ) == [(len(compressed),)]

        # A late reading for the first hour of that day, and the same one again.
        late = reading(SENSORS[0], start + timedelta(minutes=7, seconds=30), Decimal("41.00"))
        stored.pipeline.send([late])
        stored.pipeline.send([late])
        wait_for(
            lambda: (
                query(
                    db,
                    "SELECT temperature FROM readings WHERE sensor_id = %s AND capture_dt = %s",
                    (late.sensor_id, late.capture_dt),
                )
                == [(Decimal("41.00"),)]
            ),
            30,
            "the late reading in the compressed chunk",
        )
        assert query(db, count)[0][0] == len(good) + 1
        # The documented rule: a reading after its hour's final is late; the final stays.
        assert stored.finals() == expected(good)

        # The API's aggregates of that day answer from the same rows.
        local = start.astimezone(KST)
        with TestClient(create_app(stack.model_copy(update={"kafka": kafka, "db": db}))) as c:
            r = c.get(
                f"/api/v1/aggregation/temperature/location/{SENSORS[0][-4:]}",
                params={"start_date": f"{local:%Y%m%d}", "end_date": f"{local:%Y%m%d}"},
            )
        assert r.status_code == 200, r.text
        (series,) = r.json()["locations"]
        want = expected([x for x in good if x.sensor_id == SENSORS[0]])
        got = {(d["ymd"], d["hour"]): d["metrics"]["temperature_max"] for d in series["date"]}
        assert sorted(got.values()) == sorted(v[1] for v in want.values())
    finally:
        stored.close()


# --- retention ------------------------------------------------------------------------


def test_the_retention_jobs_drop_only_what_is_older_than_kept(
    empty_schema: DatabaseSettings,
) -> None:
    db = empty_schema.model_copy(
        update={"raw_retention": "30 days", "aggregates_retention": "365 days"}
    )
    migrate(db)
    needs_timescaledb(db)
    jobs = query(
        db,
        "SELECT job_id, hypertable_name FROM timescaledb_information.jobs"
        " WHERE hypertable_schema = %s AND proc_name = 'policy_retention'",
        (db.db_schema,),
    )
    # The scheduler runs a new policy at once: it would drop the old rows below before the
    # rollups were refreshed.  This test runs the jobs itself, when it means to.
    for job_id, _ in jobs:
        query(db, "SELECT alter_job(%s, scheduled => false)", (job_id,))
    now = datetime.now(UTC).replace(microsecond=0)
    raw_ages = [400, 40, 35, 29, 10, 1]
    for days in raw_ages:
        query(
            db,
            "INSERT INTO readings (sensor_id, capture_dt, loc_id, temperature)"
            " VALUES (%s, %s, %s, 20)",
            ("TEMPIOT-R001", now - timedelta(days=days), "R001"),
        )
    query(
        db,
        "INSERT INTO locations (loc_id, factory, building, floor) VALUES ('R001', 'F1', 'B1', 1)",
    )
    for days in (400, 40, 1):
        at = (now - timedelta(days=days)).replace(minute=0, second=0)
        query(
            db,
            "INSERT INTO hourly_aggregates (sensor_id, hour_start, loc_id, ymd, hour,"
            " temperature_count, temperature_sum, temperature_max, humidity_count,"
            " pcv_temperature_count, is_final) VALUES (%s, %s, %s, %s, %s, 1, 20, 20, 0, 0, true)",
            ("TEMPIOT-R001", at, "R001", f"{at:%Y%m%d}", f"{at:%H}"),
        )
        query(db, "SELECT refresh_floor_hourly_for(ARRAY['R001'], ARRAY[%s]::timestamptz[])", (at,))
    rolled = "SELECT count(*) FROM {} WHERE temperature_count > 0"
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(db.db_schema)))
        rollups.refresh(conn)
    assert [query(db, rolled.format(v))[0][0] for v in ("loc_daily", "floor_daily")] == [3, 3]
    # The floor rollup is kept as long as the hourly rows it sums.
    assert {name for _, name in jobs} == {"readings", "hourly_aggregates", "floor_hourly"}
    for job_id, _ in jobs:
        query(db, f"CALL run_job({int(job_id)})")
    kept = sorted(
        round((now - r[0]).total_seconds() / 86400)
        for r in query(db, "SELECT capture_dt FROM readings")
    )
    # Whole chunks go: a 1-day chunk whose end is older than 30 days.
    assert kept == [1, 10, 29]
    kept_hours = sorted(
        round((now - r[0]).total_seconds() / 86400)
        for r in query(db, "SELECT hour_start FROM hourly_aggregates")
    )
    assert kept_hours == [1, 40]
    kept_floor_hours = sorted(
        round((now - r[0]).total_seconds() / 86400)
        for r in query(db, "SELECT hour_start FROM floor_hourly")
    )
    assert kept_floor_hours == [1, 40]
    # The rollups lose the dropped day at their next refresh, at every level alike.
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(db.db_schema)))
        rollups.refresh(conn)
    assert [query(db, rolled.format(v))[0][0] for v in ("loc_daily", "floor_daily")] == [2, 2]
