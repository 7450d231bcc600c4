"""`/api/v1/realtime` (the original contract, defects fixed) on the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.masterdata import import_master_data, load_file

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "infra" / "examples"
SAMPLE = datetime(2025, 9, 12, 5, 59, 38, 837000, tzinfo=UTC)  # 14:59 KST


def latest(
    db: DatabaseSettings,
    sensor: str,
    loc: str,
    at: datetime,
    t: str,
    h: str,
    p: str,
    statuses: tuple[str | None, str | None, str | None],
) -> None:
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        conn.execute(
            "INSERT INTO latest_readings (sensor_id, loc_id, capture_dt, temperature, humidity,"
            " pcv_temperature, temperature_status, humidity_status, pcv_temperature_status)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (sensor, loc, at, t, h, p, *statuses),
        )


@pytest.fixture
def client(stack: Settings, kafka: KafkaSettings, db: DatabaseSettings) -> Iterator[TestClient]:
    import_master_data(db, kafka, load_file(EXAMPLES / "locations.csv"))
    latest(db, "TEMPIOT-A011", "A011", SAMPLE, "22.1", "77.7", "23.8", ("normal", None, "normal"))
    latest(
        db,
        "TEMPIOT-A012",
        "A012",
        SAMPLE - timedelta(hours=3),
        "30",
        "50.25",
        "31.0",
        ("normal", None, "warning"),
    )
    now = datetime.now(UTC)
    latest(
        db,
        "TEMPIOT-B011",
        "B011",
        now - timedelta(seconds=5),
        "33.5",
        "70",
        "36.1",
        ("warning", None, "critical"),
    )
    with TestClient(create_app(stack.model_copy(update={"kafka": kafka, "db": db}))) as c:
        yield c


def test_the_original_shape_for_one_location(client: TestClient) -> None:
    doc = client.get("/api/v1/realtime/loc_id/A011").json()
    assert (doc["capture_dt"], doc["ymd"], doc["hh"]) == (
        "2025-09-12T05:59:38.837000Z",
        "20250912",
        "14",
    )
    (m,) = doc["measurements"]
    assert m["location"] == {
        "factory": "SinPyeong",
        "building": "MX-1",
        "floor": 1,
        "loc_id": "A011",
        "area": "Storage",
    }
    assert m["metrics"] == {
        "temperature": {"value": "22.1", "status": "normal"},
        "humidity": {"value": "77.7", "status": None},
        "pcv_temperature": {"value": "23.8", "status": "normal"},
    }
    assert m["stale"] is True and m["age_seconds"] > 3600


def test_ymd_and_hh_come_from_the_newest_reading_in_the_result(client: TestClient) -> None:
    sin = client.get("/api/v1/realtime/factory/SinPyeong").json()
    assert [m["sensor_id"] for m in sin["measurements"]] == ["TEMPIOT-A011", "TEMPIOT-A012"]
    assert (sin["ymd"], sin["hh"]) == ("20250912", "14")
    assert sin["measurements"][1]["metrics"]["temperature"]["value"] == "30.0"
    assert sin["measurements"][1]["metrics"]["humidity"]["value"] == "50.25"
    everything = client.get("/api/v1/realtime/").json()
    assert len(everything["measurements"]) == 3
    fresh = next(m for m in everything["measurements"] if m["sensor_id"] == "TEMPIOT-B011")
    assert fresh["stale"] is False
    assert everything["capture_dt"] == fresh["capture_dt"]


def test_filters(client: TestClient) -> None:
    assert len(client.get("/api/v1/realtime/building/MX-1").json()["measurements"]) == 2
    assert len(client.get("/api/v1/realtime/floor/2").json()["measurements"]) == 1
    loc = client.get(
        "/api/v1/realtime/location", params={"factory": "SinPyeong", "floor": 1, "loc_id": "A012"}
    ).json()
    assert [m["sensor_id"] for m in loc["measurements"]] == ["TEMPIOT-A012"]
    empty = client.get("/api/v1/realtime/factory/Nowhere").json()
    assert empty == {"capture_dt": None, "ymd": None, "hh": None, "measurements": []}
    assert client.get("/api/v1/realtime/loc_id/x' OR '1'='1").json()["measurements"] == []
    r = client.get("/api/v1/realtime/floor/first")
    assert r.status_code == 422 and r.json()["error"]["message"]


def test_answers_are_rendered_once_per_cache_period(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings
) -> None:
    import_master_data(db, kafka, load_file(EXAMPLES / "locations.csv"))
    now = datetime.now(UTC)
    latest(db, "TEMPIOT-A011", "A011", now, "22.1", "50", "23.0", ("normal", None, "normal"))

    def set_temperature(value: str) -> None:
        with psycopg.connect(db.url) as conn:
            conn.execute(f'SET search_path TO "{db.db_schema}"')
            conn.execute("UPDATE latest_readings SET temperature = %s", (value,))

    def temperature(c: TestClient, path: str) -> str:
        body = c.get(path).json()
        return str(body["measurements"][0]["metrics"]["temperature"]["value"])

    for ttl, expected in ((3600.0, "22.1"), (0.0, "25.5")):
        set_temperature("22.1")
        api = stack.api.model_copy(update={"realtime_cache_s": ttl})
        settings = stack.model_copy(update={"kafka": kafka, "db": db, "api": api})
        with TestClient(create_app(settings)) as c:
            assert temperature(c, "/api/v1/realtime/loc_id/A011") == "22.1"
            set_temperature("25.5")
            assert temperature(c, "/api/v1/realtime/loc_id/A011") == expected
            # Another filter is another answer, rendered from the current rows.
            assert temperature(c, "/api/v1/realtime/factory/SinPyeong") == "25.5"
