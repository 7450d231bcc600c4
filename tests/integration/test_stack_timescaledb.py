"""The local stack's PostgreSQL and TimescaleDB installed after the cluster was created.

A private cluster (its own state directory and port) starts as a cluster initialised before
TimescaleDB was installed: nothing preloaded.  ``iotmon migrate`` must not crash on it (it
says what to do and stays on plain tables); ``stack up`` must then restart the server with
the library preloaded, and the next migrate converts the tables with their rows.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from iotmon.db.migrate import migrate
from iotmon.settings import DatabaseSettings, Settings
from iotmon.stack.postgres import PRELOAD_FILE, PostgresService, find_bin_dir
from iotmon.stack.timescaledb import Server
from tests.pipeline import free_port

pytestmark = pytest.mark.integration

REQUIRED = os.environ.get("IOTMON_TEST_TIMESCALEDB") == "required"


@pytest.fixture
def cluster(stack: Settings) -> Iterator[PostgresService]:
    if Server.of(find_bin_dir(stack.stack.postgres_bin_dir)).installed_version() is None:
        if REQUIRED:
            pytest.fail("TimescaleDB is not installed into the stack's PostgreSQL")
        pytest.skip("TimescaleDB is not installed on this server")
    # The cluster's owner (postgres, when the tests run as root) must reach the directory.
    state = Path(tempfile.mkdtemp(prefix="iotmon-stack-", dir="/var/tmp"))
    state.chmod(0o755)
    settings = stack.stack.model_copy(
        update={"state_dir": state, "postgres_port": free_port(), "start_timeout_s": 60.0}
    )
    service = PostgresService(settings)
    try:
        yield service
    finally:
        service.down()
        shutil.rmtree(state, ignore_errors=True)


def preloaded(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW shared_preload_libraries").fetchone()
    return str(row[0]) if row else ""


def test_timescaledb_installed_after_the_cluster_was_created(
    cluster: PostgresService, caplog: pytest.LogCaptureFixture
) -> None:
    assert cluster.up() == "started"
    assert preloaded(cluster.url) == "timescaledb"
    assert cluster.up() == "already running"

    # As a cluster initialised before TimescaleDB was installed: nothing preloaded.
    conf = cluster.data / "postgresql.conf"
    conf.write_text(
        "\n".join(line for line in conf.read_text().splitlines() if PRELOAD_FILE not in line)
    )
    (cluster.data / PRELOAD_FILE).unlink()
    cluster._pg_ctl("restart", "-m", "fast")
    assert preloaded(cluster.url) == ""

    db = DatabaseSettings(url=cluster.url, db_schema="plant")
    with caplog.at_level(logging.WARNING, logger="iotmon.db.migrate"):
        assert migrate(db)  # no crash: every migration applied, on plain tables
    assert "not preloaded" in caplog.text
    with psycopg.connect(db.url, autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone() == (0,)
        now = datetime.now(UTC).replace(microsecond=0)
        for hours in range(48):
            conn.execute(
                "INSERT INTO plant.readings (sensor_id, capture_dt, loc_id, temperature)"
                " VALUES ('TEMPIOT-S001', %s, 'S001', %s)",
                (now - timedelta(hours=hours), 20 + hours % 7),
            )
        before = conn.execute("SELECT * FROM plant.readings ORDER BY capture_dt").fetchall()

    # `stack up` notices the preload list changed and restarts its own server.
    state = cluster.up()
    assert state.startswith("restarted"), state
    assert preloaded(cluster.url) == "timescaledb"

    assert migrate(db) == []  # nothing new to apply, but the tables are converted
    with psycopg.connect(db.url) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT hypertable_name FROM timescaledb_information.hypertables"
                " WHERE hypertable_schema = 'plant'"
            )
        }
        assert tables == {"readings", "hourly_aggregates", "floor_hourly"}
        assert conn.execute("SELECT * FROM plant.readings ORDER BY capture_dt").fetchall() == before
        chunks = conn.execute("SELECT count(*) FROM show_chunks('plant.readings')").fetchone()
        assert chunks is not None and chunks[0] >= 2  # a day's chunk each
    assert migrate(db) == []
