"""`/api/v1/realtime` (the original contract, defects fixed) on the real PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.changes import DataChanges
from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.masterdata import import_master_data, load_file
from tests.helpers import wait_for

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


def _set_temperature(db: DatabaseSettings, value: str) -> None:
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        conn.execute("UPDATE latest_readings SET temperature = %s", (value,))


def _temperature(c: TestClient, path: str) -> str:
    body = c.get(path).json()
    return str(body["measurements"][0]["metrics"]["temperature"]["value"])


@pytest.fixture
def one_sensor(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings
) -> Callable[[float], TestClient]:
    """A TestClient factory (argument: realtime_cache_s) over one sensor's latest reading,
    with the database as the only source of the answers (the latest topic's statuses:
    test_api_realtime_topic.py)."""
    import_master_data(db, kafka, load_file(EXAMPLES / "locations.csv"))
    now = datetime.now(UTC)
    latest(db, "TEMPIOT-A011", "A011", now, "22.1", "50", "23.0", ("normal", None, "normal"))

    def make(max_age_s: float) -> TestClient:
        api = stack.api.model_copy(
            update={"realtime_cache_s": max_age_s, "realtime_from_topic": False}
        )
        settings = stack.model_copy(update={"kafka": kafka, "db": db, "api": api})
        return TestClient(create_app(settings))

    return make


def _listening(c: TestClient) -> DataChanges:
    changes: DataChanges = c.app.state.changes  # type: ignore[attr-defined]
    wait_for(lambda: changes.listening, 10, "the change listener")
    return changes


def test_answers_are_reused_until_the_data_changes(
    one_sensor: Callable[[float], TestClient], db: DatabaseSettings
) -> None:
    path = "/api/v1/realtime/loc_id/A011"
    with one_sensor(3600.0) as c:
        changes = _listening(c)
        first = c.get(path)
        cache = c.app.state.realtime_cache  # type: ignore[attr-defined]
        # Unchanged data: the same rendering, ages and all.
        assert c.get(path).content == first.content
        assert cache.renderings == 1
        # A notification for another deployment's schema changes nothing here.
        with psycopg.connect(db.url, autocommit=True) as conn:
            conn.execute("SELECT pg_notify('iotmon_data_changed', 'another_schema')")
        time.sleep(0.3)
        assert c.get(path).content == first.content
        # A committed change is visible without waiting out the hour, as soon as its
        # notification arrives.
        version = changes.version
        _set_temperature(db, "25.5")
        wait_for(lambda: changes.version > version, 5, "the change notification")
        assert _temperature(c, path) == "25.5"
        assert cache.renderings == 2
        # Another filter is another answer, rendered from the current rows.
        assert _temperature(c, "/api/v1/realtime/factory/SinPyeong") == "25.5"


def test_a_rolled_back_change_keeps_the_answer(
    one_sensor: Callable[[float], TestClient], db: DatabaseSettings
) -> None:
    path = "/api/v1/realtime/loc_id/A011"
    with one_sensor(3600.0) as c:
        _listening(c)
        first = c.get(path).content
        with psycopg.connect(db.url) as conn:
            conn.execute(f'SET search_path TO "{db.db_schema}"')
            conn.execute("UPDATE latest_readings SET temperature = 99")
            conn.rollback()
        time.sleep(0.3)
        assert c.get(path).content == first


def test_answers_expire_after_their_max_age(
    one_sensor: Callable[[float], TestClient], db: DatabaseSettings
) -> None:
    path = "/api/v1/realtime/loc_id/A011"
    with one_sensor(0.3) as c:
        _listening(c)
        first = c.get(path).json()["measurements"][0]["age_seconds"]
        time.sleep(0.5)
        assert c.get(path).json()["measurements"][0]["age_seconds"] >= first + 0.4
    with one_sensor(0.0) as c:
        _listening(c)
        c.get(path)
        c.get(path)
        assert c.app.state.realtime_cache.renderings == 2  # type: ignore[attr-defined]


def test_answers_are_not_reused_while_nothing_listens(
    one_sensor: Callable[[float], TestClient], db: DatabaseSettings
) -> None:
    """Killing the listener's connection: answers are rendered afresh until it is back, and
    what was rendered before it went away is never reused."""
    path = "/api/v1/realtime/loc_id/A011"
    with one_sensor(3600.0) as c:
        changes = _listening(c)
        c.get(path)
        cache = c.app.state.realtime_cache  # type: ignore[attr-defined]
        with psycopg.connect(db.url, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN iotmon_data_changed%' AND pid <> pg_backend_pid()"
                " AND backend_start > now() - interval '1 minute'"
            ).fetchall()
        assert killed
        wait_for(lambda: not changes.listening, 10, "the listener to notice")
        # While it reconnects (or if it could not), changes are still seen at once.
        _set_temperature(db, "26.5")
        assert _temperature(c, path) == "26.5"
        wait_for(lambda: changes.listening, 15, "the listener to reconnect")
        before = cache.renderings
        assert _temperature(c, path) == "26.5"
        assert _temperature(c, path) == "26.5"
        assert cache.renderings == before + 1


def test_gzip_and_entity_tags(
    one_sensor: Callable[[float], TestClient], db: DatabaseSettings
) -> None:
    path = "/api/v1/realtime/"
    now = datetime.now(UTC)
    for sensor, loc in (("TEMPIOT-A012", "A012"), ("TEMPIOT-B011", "B011")):
        latest(db, sensor, loc, now, "24.0", "55", "25.1", ("normal", None, "normal"))
    with one_sensor(3600.0) as c:
        _listening(c)
        plain = c.get(path, headers={"Accept-Encoding": "identity"})
        assert plain.headers.get("content-encoding") is None
        assert plain.headers["vary"] == "Accept-Encoding"
        etag = plain.headers["etag"]
        assert etag.startswith('W/"')
        zipped = c.get(path, headers={"Accept-Encoding": "gzip"})
        assert zipped.headers["content-encoding"] == "gzip"
        assert zipped.headers["etag"] == etag
        assert zipped.content == plain.content  # the client decompressed it
        assert int(zipped.headers["content-length"]) < len(plain.content)
        # A client that has this answer gets 304 and no body; a strong-tag spelling matches
        # too (weak comparison).
        for tag in (etag, etag.removeprefix("W/"), f'"other", {etag}', "*"):
            again = c.get(path, headers={"If-None-Match": tag})
            assert again.status_code == 304 and again.content == b""
            assert again.headers["etag"] == etag
        assert c.get(path, headers={"If-None-Match": '"other"'}).status_code == 200
        changes = c.app.state.changes  # type: ignore[attr-defined]
        version = changes.version
        _set_temperature(db, "27.5")
        wait_for(lambda: changes.version > version, 5, "the change notification")
        changed = c.get(path, headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag


def test_own_changes_are_visible_before_their_notification(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings
) -> None:
    """A sensor deleted through this API is gone from its next realtime answer, even when
    the database's notification has not reached the listener yet."""
    import_master_data(db, kafka, load_file(EXAMPLES / "locations.csv"))
    now = datetime.now(UTC)
    for sensor, loc in (("TEMPIOT-A011", "A011"), ("TEMPIOT-A012", "A012")):
        latest(db, sensor, loc, now, "24.0", "55", "25.1", ("normal", None, "normal"))
    api = stack.api.model_copy(update={"realtime_cache_s": 3600.0, "tokens": {"op": "operator"}})
    settings = stack.model_copy(update={"kafka": kafka, "db": db, "api": api})
    with TestClient(create_app(settings)) as c:
        changes = _listening(c)
        changes.schema = "not-this-one"  # notifications for our schema are ignored from here
        before = [m["sensor_id"] for m in c.get("/api/v1/realtime/").json()["measurements"]]
        assert before == ["TEMPIOT-A011", "TEMPIOT-A012"]
        r = c.delete("/api/v1/location/TEMPIOT-A012", headers={"Authorization": "Bearer op"})
        assert r.status_code == 200
        after = [m["sensor_id"] for m in c.get("/api/v1/realtime/").json()["measurements"]]
        assert after == ["TEMPIOT-A011"]


def test_gzip_only_for_clients_that_accept_it(
    one_sensor: Callable[[float], TestClient], db: DatabaseSettings
) -> None:
    now = datetime.now(UTC)
    for sensor, loc in (("TEMPIOT-A012", "A012"), ("TEMPIOT-B011", "B011")):
        latest(db, sensor, loc, now, "24.0", "55", "25.1", ("normal", None, "normal"))
    with one_sensor(3600.0) as c:
        for header, zipped in (
            ("gzip", True),
            ("br, gzip;q=0.5", True),
            ("*", True),
            ("gzip;q=0, identity", False),
            ("gzip; q=0.0", False),
            ("*;q=0", False),
            ("br", False),
            ("identity", False),
        ):
            r = c.get("/api/v1/realtime/", headers={"Accept-Encoding": header})
            assert (r.headers.get("content-encoding") == "gzip") is zipped, header
            assert len(r.json()["measurements"]) == 3
