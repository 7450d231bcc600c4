"""`/api/v1/realtime` ahead of the latest sink: newer statuses read from the real latest
topic refresh the rows of the real ``latest_readings`` table (:mod:`api.latest`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import KafkaError, Producer
from fastapi.testclient import TestClient

from api.app import create_app
from api.latest import LatestStatuses
from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.kafka import publish_keyed
from producers.masterdata import import_master_data, load_file
from schemas.common import Status
from schemas.readings import SensorStatus
from schemas.topics import topic_name
from stream_apps.sinks.latest import LatestWriter
from tests.api_support import api_settings
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "infra" / "examples"
NOW = datetime.now(UTC).replace(microsecond=123456)


def status(
    sensor: str,
    loc: str,
    at: datetime,
    t: str,
    h: str = "50",
    p: str | None = "25.0",
    statuses: tuple[Status | None, Status | None, Status | None] = (Status.NORMAL, None, None),
) -> SensorStatus:
    return SensorStatus(
        sensor_id=sensor,
        loc_id=loc,
        capture_dt=at,
        temperature=Decimal(t),
        humidity=Decimal(h),
        pcv_temperature=None if p is None else Decimal(p),
        pcv_computed=p is not None,
        temperature_status=statuses[0],
        humidity_status=statuses[1],
        pcv_temperature_status=statuses[2],
        updated_at=at + timedelta(milliseconds=40),
    )


def write_rows(db: DatabaseSettings, records: list[SensorStatus]) -> None:
    """What the latest sink does with these records."""
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        LatestWriter().write(conn, records)


def stored_temperature(db: DatabaseSettings, sensor: str) -> Decimal:
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        row = conn.execute(
            "SELECT temperature FROM latest_readings WHERE sensor_id = %s", (sensor,)
        ).fetchone()
    assert row is not None
    return Decimal(row[0])


def app_settings(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, **api: Any
) -> Settings:
    """This test's settings, with answers reused for an hour unless the data changes."""
    return api_settings(stack, kafka, db, **{"realtime_cache_s": 3600.0, **api})


@pytest.fixture
def rows(kafka: KafkaSettings, db: DatabaseSettings) -> list[SensorStatus]:
    """Three sensors' rows, a minute old."""
    import_master_data(db, kafka, load_file(EXAMPLES / "locations.csv"))
    old = NOW - timedelta(minutes=1)
    written = [
        status("TEMPIOT-A011", "A011", old, "22.1"),
        status("TEMPIOT-A012", "A012", old, "23.4", p=None),
        status("TEMPIOT-B011", "B011", old, "24.0"),
    ]
    write_rows(db, written)
    return written


@contextmanager
def serving(settings: Settings) -> Iterator[TestClient]:
    """The app of ``settings``, once it reads the latest topic and listens to PostgreSQL."""
    with TestClient(create_app(settings)) as c:
        wait_for(lambda: _statuses(c).reading, 20, "the latest-topic reader")
        changes = c.app.state.changes  # type: ignore[attr-defined]
        wait_for(lambda: changes.listening, 10, "the change listener")
        yield c


@pytest.fixture
def client(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, rows: list[SensorStatus]
) -> Iterator[TestClient]:
    with serving(app_settings(stack, kafka, db)) as c:
        yield c


def _statuses(c: TestClient) -> LatestStatuses:
    return c.app.state.statuses  # type: ignore[attr-defined, no-any-return]


def _measurements(c: TestClient, path: str = "/api/v1/realtime/") -> dict[str, dict[str, Any]]:
    return {m["sensor_id"]: m for m in c.get(path).json()["measurements"]}


def _temperature(c: TestClient, sensor: str) -> str | None:
    m = _measurements(c).get(sensor)
    return None if m is None else m["metrics"]["temperature"]["value"]


def test_a_newer_status_shows_before_the_sink_has_written_it(
    client: TestClient, kafka: KafkaSettings, db: DatabaseSettings
) -> None:
    assert _temperature(client, "TEMPIOT-A011") == "22.1"
    # 15:00:00 in Seoul on the next day: ymd and hh follow the status, not the row.
    at = datetime(2031, 3, 4, 6, 0, 0, 250000, tzinfo=UTC)
    publish_keyed(
        kafka,
        "latest",
        [
            (
                "TEMPIOT-A011",
                status(
                    "TEMPIOT-A011",
                    "A011",
                    at,
                    "26.125",
                    h="50.004",
                    p="27.35",
                    statuses=(Status.WARNING, None, Status.CRITICAL),
                ),
            )
        ],
    )
    wait_for(lambda: _temperature(client, "TEMPIOT-A011") == "26.13", 10, "the new status")
    body = client.get("/api/v1/realtime/loc_id/A011").json()
    assert (body["capture_dt"], body["ymd"], body["hh"]) == (
        "2031-03-04T06:00:00.250000Z",
        "20310304",
        "15",
    )
    (m,) = body["measurements"]
    assert m["capture_dt"] == "2031-03-04T06:00:00.250000Z"
    assert m["metrics"] == {
        "temperature": {"value": "26.13", "status": "warning"},
        "humidity": {"value": "50.0", "status": None},
        "pcv_temperature": {"value": "27.35", "status": "critical"},
    }
    # The table has not changed: the answer came from the topic.
    assert stored_temperature(db, "TEMPIOT-A011") == Decimal("22.10")
    # The other sensors still show their rows.
    assert _temperature(client, "TEMPIOT-B011") == "24.0"


def test_the_answer_is_the_same_from_the_topic_and_from_the_table(
    stack: Settings,
    client: TestClient,
    kafka: KafkaSettings,
    db: DatabaseSettings,
) -> None:
    """Values that the table rounds (half away from zero, also below zero), a missing
    perceived temperature, statuses: shown from the topic, then once the sink has written
    the same records, and from the table alone, the answers are the same."""
    newer = [
        status("TEMPIOT-A011", "A011", NOW, "-3.335", h="99.995", p="-4.005"),
        status("TEMPIOT-A012", "A012", NOW - timedelta(seconds=3), "30.0", p=None),
        status("TEMPIOT-B011", "B011", NOW, "33.5", statuses=(Status.WARNING, None, None)),
    ]
    publish_keyed(kafka, "latest", [(s.sensor_id, s) for s in newer])
    statuses = _statuses(client)
    wait_for(lambda: len(statuses) == 3, 10, "the three statuses")

    def comparable(body: dict[str, Any]) -> dict[str, Any]:
        for m in body["measurements"]:
            del m["age_seconds"]
        return body

    from_topic = comparable(client.get("/api/v1/realtime/").json())
    a011 = next(m for m in from_topic["measurements"] if m["sensor_id"] == "TEMPIOT-A011")
    assert a011["metrics"]["temperature"]["value"] == "-3.34"
    changes = client.app.state.changes  # type: ignore[attr-defined]
    wait_for(lambda: changes.listening, 10, "the change listener")
    version = changes.version
    write_rows(db, newer)
    wait_for(lambda: changes.version > version, 5, "the change notification")
    assert comparable(client.get("/api/v1/realtime/").json()) == from_topic
    with TestClient(create_app(app_settings(stack, kafka, db, realtime_from_topic=False))) as c:
        assert not hasattr(c.app.state, "statuses")  # type: ignore[attr-defined]
        assert comparable(c.get("/api/v1/realtime/").json()) == from_topic


def test_a_status_refreshes_only_a_row_that_it_is_newer_than_at_its_location(
    client: TestClient,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    rows: list[SensorStatus],
) -> None:
    row_at = rows[0].capture_dt
    publish_keyed(
        kafka,
        "latest",
        [
            # Older than the row: the row stands.
            ("TEMPIOT-A011", status("TEMPIOT-A011", "A011", row_at - timedelta(seconds=1), "11")),
            # No row (the sensor was deleted, or its first reading is not written yet).
            ("TEMPIOT-A031", status("TEMPIOT-A031", "A031", NOW, "31")),
            # Newer, from another location: shown once the sink has written it there.
            ("TEMPIOT-B011", status("TEMPIOT-B011", "A031", NOW, "21")),
        ],
    )
    statuses = _statuses(client)
    wait_for(lambda: len(statuses) == 3, 10, "the three statuses")
    shown = _measurements(client)
    assert sorted(shown) == ["TEMPIOT-A011", "TEMPIOT-A012", "TEMPIOT-B011"]
    assert shown["TEMPIOT-A011"]["metrics"]["temperature"]["value"] == "22.1"
    assert shown["TEMPIOT-B011"]["metrics"]["temperature"]["value"] == "24.0"
    assert shown["TEMPIOT-B011"]["location"]["loc_id"] == "B011"
    # Filters apply to the row's location, and the moved status is not shown at either.
    assert _measurements(client, "/api/v1/realtime/loc_id/A031") == {}
    write_rows(db, [status("TEMPIOT-B011", "A031", NOW, "21")])
    wait_for(
        lambda: "TEMPIOT-B011" in _measurements(client, "/api/v1/realtime/loc_id/A031"),
        10,
        "the sink's row at the new location",
    )
    assert _temperature(client, "TEMPIOT-B011") == "21.0"


def test_a_record_that_is_not_a_status_is_skipped(client: TestClient, kafka: KafkaSettings) -> None:
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    latest = topic_name("latest", kafka.topic_prefix)
    failed: list[Any] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failed.append(err.code())

    # A compacted topic refuses a record without a key (and with it the rest of its record
    # batch, so it goes alone); the reader never gets one (tests/unit covers it anyway).
    producer.produce(latest, b"{}", None, on_delivery=delivered)
    assert producer.flush(10) == 0
    assert failed == [KafkaError.INVALID_RECORD]
    failed.clear()
    producer.produce(latest, b'{"sensor_id": 7}', b"TEMPIOT-A012", on_delivery=delivered)
    assert producer.flush(10) == 0
    assert failed == []
    publish_keyed(kafka, "latest", [("TEMPIOT-A011", status("TEMPIOT-A011", "A011", NOW, "28.5"))])
    statuses = _statuses(client)
    wait_for(lambda: len(statuses) == 2, 10, "both keyed records")
    shown = _measurements(client)
    assert shown["TEMPIOT-A011"]["metrics"]["temperature"]["value"] == "28.5"
    assert shown["TEMPIOT-A012"]["metrics"]["temperature"]["value"] == "23.4"  # its row
    assert statuses.skipped == 1


def test_newer_statuses_are_shown_without_querying_the_rows_again(
    client: TestClient, kafka: KafkaSettings
) -> None:
    path = "/api/v1/realtime/loc_id/A011"
    client.get(path)
    cache = client.app.state.realtime_cache  # type: ignore[attr-defined]
    queries = cache.queries
    for n, t in enumerate(("26.5", "27.5")):
        at = NOW + timedelta(seconds=n)
        publish_keyed(kafka, "latest", [("TEMPIOT-A011", status("TEMPIOT-A011", "A011", at, t))])

        def shown(t: str = t) -> bool:
            (m,) = client.get(path).json()["measurements"]
            return bool(m["metrics"]["temperature"]["value"] == t)

        wait_for(shown, 10, "the new status")
    assert cache.queries == queries


def test_only_changes_of_which_rows_there_are_query_again(
    client: TestClient, db: DatabaseSettings
) -> None:
    """The values come from the topic, so the sink's updates of values need no new query
    (for at most realtime_cache_s); a new row, a deleted one and a location's change do."""
    changes = client.app.state.changes  # type: ignore[attr-defined]
    first = client.get("/api/v1/realtime/").content
    cache = client.app.state.realtime_cache  # type: ignore[attr-defined]
    queries = cache.queries

    def execute(statement: str) -> None:
        with psycopg.connect(db.url) as conn:
            conn.execute(f'SET search_path TO "{db.db_schema}"')
            conn.execute(statement)

    def after(change: Callable[[], None], rows_changed: bool) -> dict[str, dict[str, Any]]:
        version, rows_version = changes.version, changes.rows_version
        change()
        wait_for(lambda: changes.version > version, 5, "the change notification")
        assert (changes.rows_version > rows_version) == rows_changed
        return _measurements(client)

    after(lambda: execute("UPDATE latest_readings SET temperature = 99"), rows_changed=False)
    assert client.get("/api/v1/realtime/").content == first
    assert cache.queries == queries
    shown = after(lambda: write_rows(db, [status("TEMPIOT-A031", "A031", NOW, "31")]), True)
    assert shown["TEMPIOT-A031"]["metrics"]["temperature"]["value"] == "31.0"
    assert shown["TEMPIOT-A011"]["metrics"]["temperature"]["value"] == "99.0"  # queried
    shown = after(
        lambda: execute("UPDATE locations SET is_active = false WHERE loc_id = 'A012'"), True
    )
    assert "TEMPIOT-A012" not in shown
    shown = after(
        lambda: execute("DELETE FROM latest_readings WHERE sensor_id = 'TEMPIOT-B011'"), True
    )
    assert sorted(shown) == ["TEMPIOT-A011", "TEMPIOT-A031"]
    assert cache.queries == queries + 3


def test_rows_past_their_max_age_are_renewed_without_making_an_answer_wait(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, rows: list[SensorStatus]
) -> None:
    path = "/api/v1/realtime/loc_id/A011"
    with serving(app_settings(stack, kafka, db, realtime_cache_s=0.3)) as c:
        c.get(path)
        cache = c.app.state.realtime_cache  # type: ignore[attr-defined]
        queries = cache.queries
        with psycopg.connect(db.url) as conn:
            conn.execute(f'SET search_path TO "{db.db_schema}"')
            conn.execute("UPDATE latest_readings SET temperature = 99")
        time.sleep(0.4)

        def temperature() -> str:
            (m,) = c.get(path).json()["measurements"]
            return str(m["metrics"]["temperature"]["value"])

        # Past its max age the answer is built again at once, from the rows it has, and
        # the rows are queried again meanwhile.
        assert temperature() == "22.1"
        wait_for(lambda: cache.queries == queries + 1, 5, "the rows' renewal")
        wait_for(lambda: temperature() == "99.0", 5, "an answer from the renewed rows")


def test_renewed_rows_that_did_not_change_keep_their_measurements(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, rows: list[SensorStatus]
) -> None:
    path = "/api/v1/realtime/"
    with serving(app_settings(stack, kafka, db, realtime_cache_s=0.3)) as c:
        first = c.get(path).json()
        cache = c.app.state.realtime_cache  # type: ignore[attr-defined]
        ((key, held),) = cache._rows.items()
        assert all(slot is not None for slot in held.memo)
        queries = cache.queries
        time.sleep(0.4)
        c.get(path)
        wait_for(lambda: cache._rows[key] is not held, 5, "the rows' renewal")
        renewed = cache._rows[key]
        assert cache.queries == queries + 1 and renewed.started > held.started
        assert renewed.rows is held.rows and renewed.memo is held.memo
        again = c.get(path).json()
        assert [m["metrics"] for m in again["measurements"]] == [
            m["metrics"] for m in first["measurements"]
        ]
