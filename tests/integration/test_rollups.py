"""The daily and monthly rollups (TimescaleDB continuous aggregates, migration 012) on the
real server: the API's day and month buckets from them equal those from the hourly sources,
for locations in time zones whose local days straddle UTC days and months; the aggregates
sink brings the materialized buckets of an earlier day up to date as it writes, and a
master-data import that moves a location does the same for the floor levels.

On plain PostgreSQL (``make test-plain``) the rollup tests skip and the last test shows the
same sink and API path answering without them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.routers import aggregation
from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.masterdata import MasterData, import_master_data
from schemas.aggregates import HourlyAggregate, MetricAggregate
from schemas.master import Location, Sensor
from tests.helpers import wait_for
from tests.integration.test_output_sinks import Sinks
from tests.integration.test_timescaledb import extension_version, needs_timescaledb, query

pytestmark = pytest.mark.integration

CENT = Decimal("0.01")
ROLLUPS = {"loc_daily", "loc_monthly", "floor_daily", "floor_monthly"}
# Local days of Seoul start at 15:00 UTC, of Los Angeles at 07:00 or 08:00 UTC (DST), so
# both straddle UTC days; Chatham (+12:45/+13:45) straddles them the most.
ZONES = ("Asia/Seoul", "America/Los_Angeles", "Pacific/Chatham")
PLACES = [
    # loc_id, factory, building, floor, zone
    ("R001", "F1", "B1", 1, ZONES[0]),
    ("R002", "F1", "B1", 1, ZONES[1]),
    ("R003", "F1", "B1", 2, ZONES[2]),
    ("R004", "F1", "B2", 1, ZONES[0]),
    ("R005", "F2", "B1", 1, ZONES[1]),
]


def plant(places: list[tuple[str, str, str, int, str]]) -> MasterData:
    return MasterData(
        [
            Location(loc_id=loc, factory=f, building=b, floor=fl, area="Line", timezone=tz)
            for loc, f, b, fl, tz in places
        ],
        [Sensor(sensor_id=f"TEMPIOT-{loc}", loc_id=loc) for loc, *_ in places],
    )


def hourly(
    sensor: str, loc: str, zone: str, start: datetime, rng: random.Random, *, final: bool = True
) -> HourlyAggregate:
    local = start.astimezone(ZoneInfo(zone))

    def metric() -> MetricAggregate:
        count = rng.randint(1, 60)
        values = [Decimal(rng.randint(-2000, 5000)) / 100 for _ in range(3)]
        return MetricAggregate(
            count=count,
            sum=(sum(values, Decimal(0)) * count / 3).quantize(CENT),
            min=min(values),
            max=max(values),
        )

    return HourlyAggregate(
        sensor_id=sensor,
        loc_id=loc,
        hour_start=start,
        ymd=local.strftime("%Y%m%d"),
        hour=local.strftime("%H"),
        temperature=metric(),
        humidity=metric(),
        pcv_temperature=metric() if rng.random() > 0.1 else None,
        is_final=final,
        updated_at=start + timedelta(minutes=61),
    )


def temp(record: HourlyAggregate) -> MetricAggregate:
    assert record.temperature is not None
    return record.temperature


@pytest.fixture
def sinks(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, group_id: str
) -> Iterator[Sinks]:
    import_master_data(db, kafka, plant(PLACES))
    s = Sinks(stack, kafka, db, group_id)
    yield s
    s.close()


def send_hours(sinks: Sinks, records: list[HourlyAggregate]) -> None:
    by_sensor: dict[str, list[HourlyAggregate]] = {}
    for r in records:
        by_sensor.setdefault(r.sensor_id, []).append(r)
    for sensor, rows in by_sensor.items():
        sinks.send("aggregates_hourly", sensor, rows)


def api(stack: Settings, kafka: KafkaSettings, db: DatabaseSettings) -> TestClient:
    return TestClient(create_app(stack.model_copy(update={"kafka": kafka, "db": db})))


PATHS = [
    "/api/v1/aggregation/{metric}/",
    "/api/v1/aggregation/{metric}/location/R002",
    "/api/v1/aggregation/{metric}/factory/F1",
    "/api/v1/aggregation/{metric}/building/F1/B1",
    "/api/v1/aggregation/{metric}/floor/F1/B1/1",
]


def answers(client: TestClient, periods: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for metric in ("temperature", "humidity", "pcv_temperature"):
        for path in PATHS:
            for first, last in periods:
                url = path.format(metric=metric)
                r = client.get(url, params={"start_date": first, "end_date": last})
                assert r.status_code == 200, r.text
                out[f"{url}?{first}-{last}"] = r.json()
    return out


def materialized(db: DatabaseSettings, view: str, statement: str) -> list[Any]:
    """``statement`` over ``view``'s materialized buckets only (no real-time part)."""
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}", public')
        conn.execute(f"ALTER MATERIALIZED VIEW {view} SET (timescaledb.materialized_only = true)")
        try:
            return conn.execute(statement.encode()).fetchall()
        finally:
            conn.execute(
                f"ALTER MATERIALIZED VIEW {view} SET (timescaledb.materialized_only = false)"
            )


def month_periods(first_hour: datetime, days: int) -> list[tuple[str, str]]:
    """Month forms (day buckets) and year forms (month buckets) covering the data."""
    months = sorted(
        {f"{(first_hour + timedelta(days=d)).astimezone(UTC):%Y%m}" for d in range(-1, days + 2)}
    )
    years = sorted({m[:4] for m in months})
    return [(m, m) for m in months] + [(months[0], months[-1])] + [(y, y) for y in years]


def test_day_and_month_buckets_from_the_rollups_equal_those_from_the_hours(
    stack: Settings,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    sinks: Sinks,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    needs_timescaledb(db)
    views = {
        r[0]
        for r in query(
            db,
            "SELECT view_name FROM timescaledb_information"
            ".continuous_aggregates WHERE view_schema = %s",
            (db.db_schema,),
        )
    }
    assert views == ROLLUPS
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    # About ten weeks up to the current hour, across at least two month ends, with gaps,
    # provisional hours among the finals, and the current day (answered in real time).
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    first = now - timedelta(days=70)
    records = []
    for loc, _f, _b, _fl, zone in PLACES:
        hour = first
        while hour <= now:
            if rng.random() < 0.85:
                records.append(
                    hourly(f"TEMPIOT-{loc}", loc, zone, hour, rng, final=rng.random() < 0.97)
                )
            hour += timedelta(hours=rng.choice((1, 1, 1, 2, 5)))
    live = sinks.start("aggregates")
    send_hours(sinks, records)
    live.wait_records(len(records))
    # The sink's batches held hours of earlier days: materialized as it wrote them.
    assert materialized(db, "loc_daily", "SELECT count(*) FROM loc_daily")[0][0] > 0
    assert materialized(db, "floor_monthly", "SELECT count(*) FROM floor_monthly")[0][0] > 0

    periods = month_periods(first, 70)
    used: list[bool] = []
    real = aggregation._has_rollups

    async def spy(request: Any, conn: Any) -> bool:
        used.append(await real(request, conn))
        return used[-1]

    with api(stack, kafka, db) as client:
        monkeypatch.setattr(aggregation, "_has_rollups", spy)
        from_rollups = answers(client, periods)
        assert used and all(used), "the day and month buckets came from the rollups"

        async def never(request: Any, conn: Any) -> bool:
            return False

        monkeypatch.setattr(aggregation, "_has_rollups", never)
        from_hours = answers(client, periods)
    assert sum(len(a["locations"]) for a in from_hours.values()) > 50
    for key, expected in from_hours.items():
        assert from_rollups[key] == expected, f"{key} (seed {seed})"


def test_the_sink_refreshes_an_earlier_day_it_writes_at_once(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, sinks: Sinks
) -> None:
    needs_timescaledb(db)
    rng = random.Random(7)
    day = datetime.now(UTC).replace(hour=3, minute=0, second=0, microsecond=0) - timedelta(days=5)
    live = sinks.start("aggregates")
    first = [
        hourly("TEMPIOT-R001", "R001", ZONES[0], day + timedelta(hours=h), rng) for h in (0, 1)
    ]
    send_hours(sinks, first)
    live.wait_records(2)
    count = (
        "SELECT sum(temperature_count) FROM loc_daily WHERE loc_id = 'R001'"
        f" AND bucket = '{day:%Y-%m-%d}'"
    )
    assert materialized(db, "loc_daily", count) == [(sum(temp(r).count for r in first),)]
    # Another hour of that (materialized) day, five days late: in the rollups at once, not
    # at the policy's next run (15 minutes).
    late = hourly("TEMPIOT-R001", "R001", ZONES[0], day + timedelta(hours=5), rng)
    send_hours(sinks, [late])
    live.wait_records(3)
    total = sum(temp(r).count for r in [*first, late])
    assert materialized(db, "loc_daily", count) == [(total,)]
    ym = f"{day.astimezone(ZoneInfo(ZONES[0])):%Y%m}"
    month = f"SELECT sum(temperature_count) FROM loc_monthly WHERE loc_id = 'R001' AND ym = '{ym}'"
    if day.astimezone(UTC).month != datetime.now(UTC).month:
        assert materialized(db, "loc_monthly", month) == [(total,)]
    assert query(db, month) == [(total,)]


def test_a_moved_location_moves_its_past_days_between_floors(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, sinks: Sinks
) -> None:
    needs_timescaledb(db)
    rng = random.Random(11)
    day = datetime.now(UTC).replace(hour=2, minute=0, second=0, microsecond=0) - timedelta(days=3)
    live = sinks.start("aggregates")
    rows = [
        hourly("TEMPIOT-R004", "R004", ZONES[0], day + timedelta(hours=h), rng) for h in range(6)
    ]
    send_hours(sinks, rows)
    live.wait_records(len(rows))
    per_floor = (
        "SELECT building, floor, sum(temperature_count) FROM floor_daily"
        f" WHERE factory = 'F1' AND bucket = '{day:%Y-%m-%d}' GROUP BY 1, 2 ORDER BY 1, 2"
    )
    n = sum(temp(r).count for r in rows)
    assert materialized(db, "floor_daily", per_floor) == [("B2", 1, Decimal(n))]
    # R004 moves from B2 floor 1 to B1 floor 3, by a master-data import.
    moved = [p if p[0] != "R004" else ("R004", "F1", "B1", 3, ZONES[0]) for p in PLACES]
    import_master_data(db, kafka, plant(moved))
    assert materialized(db, "floor_daily", per_floor) == [("B1", 3, Decimal(n))]
    local = day.astimezone(ZoneInfo(ZONES[0]))
    with api(stack, kafka, db) as client:
        r = client.get(
            "/api/v1/aggregation/temperature/floor/F1/B1/3",
            params={"start_date": f"{local:%Y%m}", "end_date": f"{local:%Y%m}"},
        )
    assert r.status_code == 200, r.text
    [series] = r.json()["locations"]
    assert series["building"] == "B1" and series["floor"] == 3
    assert {b["ymd"] for b in series["date"]} == {r.ymd for r in rows}


def test_day_buckets_of_an_earlier_day_through_the_sink_on_any_storage(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, sinks: Sinks
) -> None:
    """Also on plain PostgreSQL: the sink's refresh after an earlier day is a no-op there."""
    rng = random.Random(3)
    day = datetime.now(UTC).replace(hour=1, minute=0, second=0, microsecond=0) - timedelta(days=2)
    live = sinks.start("aggregates")
    rows = [
        hourly("TEMPIOT-R002", "R002", ZONES[1], day + timedelta(hours=h), rng) for h in range(4)
    ]
    send_hours(sinks, rows)
    live.wait_records(len(rows))
    wait_for(lambda: live.metric("iotmon_sink_rows_total") == len(rows), 10, "the rows")
    months = sorted({r.ymd[:6] for r in rows})
    with api(stack, kafka, db) as client:
        r = client.get(
            "/api/v1/aggregation/temperature/location/R002",
            params={"start_date": months[0], "end_date": months[-1]},
        )
    assert r.status_code == 200, r.text
    [series] = r.json()["locations"]
    buckets = {b["ymd"]: b for b in series["date"]}
    assert set(buckets) == {r.ymd for r in rows}
    for ymd, bucket in buckets.items():
        mine = [r for r in rows if r.ymd == ymd]
        top = max(temp(r).max for r in mine)
        assert bucket["metrics"]["temperature_max"] == str(top.quantize(CENT))
        assert bucket["provisional"] is False
    print("storage:", "TimescaleDB" if extension_version(db) else "plain PostgreSQL")
