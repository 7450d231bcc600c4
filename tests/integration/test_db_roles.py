"""Least-privilege PostgreSQL roles (``iotmon db roles``) on the real server: the migrator
owns, the sink role writes time series only, the API role reads and acts; and the real
sinks and API work with nothing more than those rights.

Each test gets roles of its own (prefix ``t<test id>``), dropped after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import errors

from api.app import create_app
from iotmon.credentials import load_or_create_passwords
from iotmon.db.migrate import migrate
from iotmon.db.roles import KINDS, create_roles, drop_roles
from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.masterdata import import_master_data, load_file
from schemas.readings import Reading
from tests.api_support import OPERATOR, api_settings
from tests.helpers import wait_for
from tests.pipeline import Pipeline

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "infra" / "examples"


@pytest.fixture
def roles(
    stack: Settings, empty_schema: DatabaseSettings, test_id: str, tmp_path: Path
) -> Iterator[dict[str, DatabaseSettings]]:
    """kind -> database settings logged in as that role, on this test's schema (migrated
    by the migrator)."""
    prefix = f"t{test_id}"
    passwords = load_or_create_passwords(tmp_path / "pg", KINDS)
    with psycopg.connect(stack.db.url, autocommit=True) as conn:
        names = create_roles(conn, prefix, passwords, empty_schema.db_schema)
    out = {
        kind: empty_schema.model_copy(
            update={
                "url": psycopg.conninfo.make_conninfo(
                    stack.db.url, user=names[kind], password=passwords[kind]
                ),
                "roles_prefix": prefix,
            }
        )
        for kind in KINDS
    }
    try:
        migrate(out["migrator"])
        yield out
    finally:
        with psycopg.connect(stack.db.url, autocommit=True) as conn:
            drop_roles(conn, prefix)


def run(db: DatabaseSettings, statement: str) -> str:
    """``ok`` or ``denied`` for one statement (rolled back either way)."""
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}", public')
        try:
            conn.execute(statement)
        except errors.InsufficientPrivilege:
            return "denied"
        finally:
            conn.rollback()
    return "ok"


def test_the_migrator_owns_the_schema_and_its_tables(roles: dict[str, DatabaseSettings]) -> None:
    migrator = roles["migrator"]
    with psycopg.connect(migrator.url) as conn:
        owners = {
            str(r[0])
            for r in conn.execute(
                "SELECT tableowner FROM pg_tables WHERE schemaname = %s", (migrator.db_schema,)
            )
        }
        user = conn.info.user
    assert owners == {user}
    assert migrate(migrator) == []  # idempotent, and the grants are renewed


NOW = "now()"
CASES = [
    # (role, statement, expected)
    (
        "sink",
        "INSERT INTO readings (sensor_id, capture_dt, loc_id, temperature, humidity,"
        " pcv_temperature, source, received_at) VALUES ('S', now(), 'L', 1, 1, 1, 'kafka', now())",
        "ok",
    ),
    (
        "sink",
        "WITH l AS (INSERT INTO locations (loc_id, factory) VALUES ('L9', 'F') RETURNING loc_id)"
        " INSERT INTO sensors (sensor_id, loc_id) SELECT 'S9', loc_id FROM l",
        "ok",
    ),
    ("sink", "UPDATE sensors SET name = 'x'", "denied"),
    (
        "sink",
        "INSERT INTO thresholds (threshold_type, level, min_value) VALUES"
        " ('humidity', 'warning', 80)",
        "denied",
    ),
    ("sink", "DELETE FROM readings", "denied"),
    ("sink", "UPDATE alert_subscriptions SET enabled = false", "denied"),
    ("sink", "DROP TABLE readings", "denied"),
    ("sink", "CREATE TABLE mine (x int)", "denied"),
    ("sink", "TRUNCATE alerts", "denied"),
    ("sink", "SELECT count(*) FROM alert_subscriptions", "denied"),  # personal data
    ("sink", "SELECT count(*) FROM notifications", "denied"),
    ("api", "SELECT count(*) FROM readings", "ok"),
    ("api", "UPDATE alerts SET measured_value = 1", "denied"),  # acknowledge/resolve only
    ("api", "UPDATE alerts SET state = 'resolved', resolved_by = 'x'", "ok"),
    ("api", "SELECT count(*) FROM notifications", "ok"),
    (
        "api",
        "INSERT INTO thresholds (threshold_type, level, min_value) VALUES"
        " ('humidity', 'warning', 80)",
        "ok",
    ),
    ("api", "UPDATE alerts SET ack_note = 'seen'", "ok"),
    (
        "api",
        "INSERT INTO readings (sensor_id, capture_dt, loc_id, temperature, humidity,"
        " pcv_temperature, source, received_at) VALUES ('S', now(), 'L', 1, 1, 1, 'kafka', now())",
        "denied",
    ),
    ("api", "UPDATE hourly_aggregates SET is_final = true", "denied"),
    ("api", "DELETE FROM alerts", "denied"),
    ("api", "DROP TABLE thresholds", "denied"),
    ("api", "ALTER TABLE alerts ADD COLUMN x int", "denied"),
]


@pytest.mark.parametrize(("kind", "statement", "expected"), CASES)
def test_each_role_may_do_exactly_its_part(
    roles: dict[str, DatabaseSettings], kind: str, statement: str, expected: str
) -> None:
    assert run(roles[kind], statement) == expected


def test_a_wrong_password_is_refused(roles: dict[str, DatabaseSettings]) -> None:
    bad = psycopg.conninfo.make_conninfo(roles["api"].url, password="not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(bad, connect_timeout=5).close()


def test_the_sinks_and_the_api_work_with_their_roles_alone(
    roles: dict[str, DatabaseSettings],
    stack: Settings,
    kafka: KafkaSettings,
    test_id: str,
    tmp_path: Path,
) -> None:
    """The aggregates, alerts and latest sinks as the sink role; master data, thresholds,
    realtime and alert actions through the API as the API role."""
    api_db = roles["api"]
    import_master_data(api_db, kafka, load_file(EXAMPLES / "locations.csv"))
    with TestClient(create_app(api_settings(stack, kafka, api_db))) as client:
        band = {
            "threshold_type": "pcv_temperature",
            "level": "orange",
            "min_value": "33.00",
            "hold_seconds": 0,
            "clear_seconds": 0,
        }
        assert client.post("/api/v1/thresholds/", json=band, headers=OPERATOR).status_code == 201
        pipeline = Pipeline(stack, kafka, roles["sink"], test_id, tmp_path)
        try:
            pipeline.worker()
            pipeline.wait_ready()
            at = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
            pipeline.send(
                [
                    Reading(
                        sensor_id="TEMPIOT-B011",
                        loc_id="B011",
                        capture_dt=at,
                        temperature=Decimal("35.0"),
                        humidity=Decimal("60.0"),
                        pcv_temperature=Decimal("34.00"),
                        source="kafka",
                        received_at=at,
                    )
                ]
            )

            def active() -> list[dict[str, object]]:
                r = client.get("/api/v1/alerts/", params={"state": "active"})
                assert r.status_code == 200, r.text
                return list(r.json())

            wait_for(lambda: len(active()) == 1, timeout=60, what="the alert, stored by the sink")
            alert_id = active()[0]["alert_id"]
            ack = client.post(
                f"/api/v1/alerts/{alert_id}/ack", json={"note": "on it"}, headers=OPERATOR
            )
            assert ack.status_code == 200, ack.text
            moved = client.put(
                "/api/v1/location/TEMPIOT-B011",
                json={"sensor": {"name": "by the door"}},
                headers=OPERATOR,
            )
            assert moved.status_code == 200, moved.text
            realtime = client.get("/api/v1/realtime/").json()["measurements"]
            assert any(m["sensor_id"] == "TEMPIOT-B011" for m in realtime)
        finally:
            pipeline.close()
