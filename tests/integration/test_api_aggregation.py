"""`/api/v1/aggregation` through HTTP on the real PostgreSQL, with hourly rows written by the
aggregates sink's writer: bucket rules, chronological order, weighted averages, errors, and
the floor rollup behind the factory, building and floor levels."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.masterdata import MasterData, import_master_data
from schemas.aggregates import HourlyAggregate, MetricAggregate
from schemas.master import Location, Sensor
from stream_apps.sinks.aggregates import AggregatesWriter

pytestmark = pytest.mark.integration

KST = ZoneInfo("Asia/Seoul")


def insert_hour(
    db: DatabaseSettings,
    sensor: str,
    loc: str,
    local: datetime,
    count: int,
    total: str,
    maximum: str,
    final: bool = True,
) -> None:
    """One hourly row, written by the aggregates sink's own writer (which also maintains the
    floor rollup)."""
    metric = MetricAggregate(count=count, sum=Decimal(total), min=Decimal(0), max=Decimal(maximum))
    record = HourlyAggregate(
        sensor_id=sensor,
        loc_id=loc,
        hour_start=local,
        ymd=f"{local:%Y%m%d}",
        hour=f"{local:%H}",
        temperature=metric,
        humidity=metric,
        pcv_temperature=metric,
        is_final=final,
        updated_at=datetime.now(UTC),
    )
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        AggregatesWriter().write(conn, [record])


@pytest.fixture
def client(stack: Settings, kafka: KafkaSettings, db: DatabaseSettings) -> Iterator[TestClient]:
    import_master_data(
        db,
        kafka,
        MasterData(
            [
                Location(
                    loc_id="A031",
                    factory="SinPyeong",
                    building="F-2001",
                    floor=1,
                    area="Assembly 2",
                ),
                Location(
                    loc_id="A032", factory="SinPyeong", building="F-2001", floor=2, area="Paint"
                ),
                Location(loc_id="B011", factory="JangNim", building="JN-A", floor=1, area="Cut"),
            ],
            [
                Sensor(sensor_id="TEMPIOT-A031", loc_id="A031"),
                Sensor(sensor_id="TEMPIOT-A032", loc_id="A032"),
                Sensor(sensor_id="TEMPIOT-B011", loc_id="B011"),
            ],
        ),
    )
    # 2024-09-22 and 23, hours 00..23 (KST), inserted out of order
    for day in (22, 23):
        for h in (12, 2, 10, 0, 23, 1, 20):
            local = datetime(2024, 9, day, h, tzinfo=KST)
            insert_hour(db, "TEMPIOT-A031", "A031", local, 10, "270.00", "27.00")
    # Weighted daily average: 1 reading of 20 and 3 readings of 30 -> 27.50 (not 25.00)
    insert_hour(db, "TEMPIOT-A032", "A032", datetime(2024, 3, 5, 8, tzinfo=KST), 1, "20", "20")
    insert_hour(db, "TEMPIOT-A032", "A032", datetime(2024, 3, 5, 9, tzinfo=KST), 3, "90", "30")
    insert_hour(
        db, "TEMPIOT-A032", "A032", datetime(2024, 5, 1, 0, tzinfo=KST), 2, "61", "31", final=False
    )
    insert_hour(db, "TEMPIOT-B011", "B011", datetime(2024, 1, 15, 3, tzinfo=KST), 4, "100", "26")
    with TestClient(create_app(stack.model_copy(update={"kafka": kafka, "db": db}))) as c:
        yield c


def get(client: TestClient, path: str, start: str, end: str) -> dict:  # type: ignore[type-arg]
    r = client.get(
        f"/api/v1/aggregation/pcv_temperature{path}", params={"start_date": start, "end_date": end}
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_hourly_buckets_are_chronological(client: TestClient) -> None:
    doc = get(client, "/location/A031", "20240922", "20240923")
    (series,) = doc["locations"]
    assert (series["factory"], series["building"], series["floor"], series["area"]) == (
        "SinPyeong",
        "F-2001",
        1,
        "Assembly 2",
    )
    keys = [(d["ymd"], d["hour"]) for d in series["date"]]
    assert keys == sorted(keys) and len(keys) == 14
    assert keys[:4] == [
        ("20240922", "00"),
        ("20240922", "01"),
        ("20240922", "02"),
        ("20240922", "10"),
    ]
    assert series["date"][0]["metrics"] == {
        "pcv_temperature_max": "27.00",
        "pcv_temperature_avg": "27.00",
        "temperature_max": "27.00",
        "temperature_avg": "27.00",
        "humidity_max": "27.00",
        "humidity_avg": "27.00",
    }


def test_bucket_rules_of_the_original(client: TestClient) -> None:
    year = get(client, "/", "2024", "2024")["locations"]
    assert {s["loc_id"]: [d["ymd"] for d in s["date"]] for s in year} == {
        "A031": ["202409"],
        "A032": ["202403", "202405"],
        "B011": ["202401"],
    }
    assert all(d["hour"] == "00" for s in year for d in s["date"])
    daily = get(client, "/location/A032", "202401", "202403")["locations"][0]["date"]
    assert [d["ymd"] for d in daily] == ["20240305"]
    assert daily[0]["metrics"]["pcv_temperature_avg"] == "27.50"  # weighted by readings
    monthly = get(client, "/location/A032", "202401", "202405")["locations"][0]["date"]
    assert [(d["ymd"], d["provisional"]) for d in monthly] == [("202403", False), ("202405", True)]
    assert [
        d["ymd"] for d in get(client, "/location/A032", "202401", "202404")["locations"][0]["date"]
    ] == ["20240305"]


def test_levels_and_empty_results(client: TestClient) -> None:
    (factory,) = get(client, "/factory/SinPyeong", "202403", "202403")["locations"]
    assert (factory["factory"], factory["building"], factory["loc_id"], factory["area"]) == (
        "SinPyeong",
        None,
        None,
        None,
    )
    (building,) = get(client, "/building/SinPyeong/F-2001", "2024", "2024")["locations"]
    assert [d["ymd"] for d in building["date"]] == ["202403", "202405", "202409"]
    (floor,) = get(client, "/floor/SinPyeong/F-2001/1", "2024", "2024")["locations"]
    assert floor["floor"] == 1 and [d["ymd"] for d in floor["date"]] == ["202409"]
    assert get(client, "/factory/Nowhere", "2024", "2024") == {"locations": []}
    assert get(client, "/", "2023", "2023") == {"locations": []}


@pytest.mark.parametrize(
    ("path", "params", "word"),
    [
        (
            "/api/v1/aggregation/pcv_temperature/",
            {"start_date": "2024-01", "end_date": "202401"},
            "start_date",
        ),
        (
            "/api/v1/aggregation/pcv_temperature/",
            {"start_date": "202403", "end_date": "202401"},
            "before",
        ),
        ("/api/v1/aggregation/pcv_temperature/", {"start_date": "202401"}, "end_date"),
        ("/api/v1/aggregation/pressure/", {"start_date": "2024", "end_date": "2024"}, "metric"),
        (
            "/api/v1/aggregation/humidity/location/x'--",
            {"start_date": "2024", "end_date": "2024"},
            "loc_id",
        ),
    ],
)
def test_bad_requests_are_422_naming_the_parameter(
    client: TestClient, path: str, params: dict[str, str], word: str
) -> None:
    r = client.get(path, params=params)
    assert r.status_code == 422, r.text
    assert word in r.json()["error"]["message"]


def test_levels_above_a_location_equal_the_sum_of_its_locations(client: TestClient) -> None:
    """The floor rollup gives the same numbers as the locations' own rows, weighted."""
    (factory,) = get(client, "/factory/SinPyeong", "20240305", "20240305")["locations"]
    assert [(d["hour"], d["metrics"]["pcv_temperature_avg"]) for d in factory["date"]] == [
        ("08", "20.00"),
        ("09", "30.00"),
    ]
    (monthly,) = get(client, "/factory/SinPyeong", "2024", "2024")["locations"]
    by_month = {d["ymd"]: d for d in monthly["date"]}
    # September: A031 only, 14 hours of 10 readings averaging 27
    assert by_month["202409"]["metrics"]["pcv_temperature_avg"] == "27.00"
    assert by_month["202403"]["metrics"]["pcv_temperature_avg"] == "27.50"
    assert by_month["202405"]["provisional"] is True


def test_a_location_moved_to_another_floor_takes_its_hours_along(
    client: TestClient, db: DatabaseSettings
) -> None:
    before = get(client, "/floor/SinPyeong/F-2001/2", "2024", "2024")["locations"]
    assert [d["ymd"] for d in before[0]["date"]] == ["202403", "202405"]
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        conn.execute("UPDATE locations SET floor = 3 WHERE loc_id = 'A032'")
    assert get(client, "/floor/SinPyeong/F-2001/2", "2024", "2024") == {"locations": []}
    (moved,) = get(client, "/floor/SinPyeong/F-2001/3", "2024", "2024")["locations"]
    assert [d["ymd"] for d in moved["date"]] == ["202403", "202405"]
    assert moved["date"][0]["metrics"]["pcv_temperature_avg"] == "27.50"
    # the building total is unchanged by the move
    (building,) = get(client, "/building/SinPyeong/F-2001", "2024", "2024")["locations"]
    assert [d["ymd"] for d in building["date"]] == ["202403", "202405", "202409"]
