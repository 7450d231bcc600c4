"""The daily and monthly rollups (TimescaleDB continuous aggregates, migration 012) on the
real server: the API's day and month buckets from them equal those from the hourly sources,
for locations in time zones whose local days straddle UTC days and months; the aggregates
sink brings the materialized buckets of an earlier day up to date as it writes, and a
master-data import that moves a location does the same for the floor levels.

On plain PostgreSQL (``make test-plain``) the rollup tests skip and the last test shows the
same sink and API path answering without them.
"""

from __future__ import annotations

import os
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
from iotmon.db import rollups
from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.masterdata import MasterData, import_master_data
from schemas.aggregates import HourlyAggregate, MetricAggregate
from schemas.master import Location, Sensor
from tests.helpers import wait_for
from tests.integration.test_output_sinks import RunningSink, Sinks
from tests.integration.test_timescaledb import extension_version, needs_timescaledb, query

pytestmark = pytest.mark.integration

CENT = Decimal("0.01")
ROLLUPS = {"loc_daily", "loc_monthly", "floor_daily", "floor_monthly"}
# Local days of Seoul start at 15:00 UTC, of Los Angeles at 07:00 or 08:00 UTC (DST), so
# both straddle UTC days; Chatham (+12:45/+13:45) straddles them the most.
# Local days of Seoul start at 15:00 UTC, of Los Angeles at 07:00 or 08:00 UTC (DST), so
# both straddle UTC days; Chatham (+12:45/+13:45), Kiritimati (+14) and Etc/GMT+12 (-12)
# are the farthest from UTC there are.
ZONES = (
    "Asia/Seoul",
    "America/Los_Angeles",
    "Pacific/Chatham",
    "Pacific/Kiritimati",
    "Etc/GMT+12",
)
PLACES = [
    # loc_id, factory, building, floor, zone
    ("R001", "F1", "B1", 1, ZONES[0]),
    ("R002", "F1", "B1", 1, ZONES[1]),
    ("R003", "F1", "B1", 2, ZONES[2]),
    ("R004", "F1", "B2", 1, ZONES[0]),
    ("R005", "F2", "B1", 1, ZONES[1]),
    ("R006", "F1", "B1", 1, ZONES[3]),
    ("R007", "F1", "B2", 1, ZONES[4]),
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
    "/api/v1/aggregation/{metric}/location/R006",
    "/api/v1/aggregation/{metric}/location/R007",
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


def month_periods(spans: list[tuple[datetime, datetime]]) -> list[tuple[str, str]]:
    """Month forms (day buckets) and year forms (month buckets) covering the data."""
    months: set[str] = set()
    for first, last in spans:
        at = first - timedelta(days=1)
        while at <= last + timedelta(days=1):
            months.add(f"{at:%Y%m}")
            at += timedelta(days=1)
    ordered = sorted(months)
    years = sorted({m[:4] for m in ordered})

    def plus_four(month: str) -> str:
        y, m = divmod(int(month[:4]) * 12 + int(month[4:]) - 1 + 4, 12)
        return f"{y}{m + 1:02d}"

    # Month buckets from every month on (the bounds of a range that starts in April or
    # November cross a DST change in many zones).
    from_each = [(m, plus_four(m)) for m in ordered]
    return [(m, m) for m in ordered] + from_each + [(y, y) for y in years]


def compare(
    settings: Settings, periods: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> int:
    """Every answer from the rollups equals the one from the hourly rows (the API with
    ``api.rollups`` off); returns how many series were compared."""
    used: list[bool] = []
    real = aggregation._has_rollups

    async def spy(request: Any, conn: Any) -> bool:
        used.append(await real(request, conn))
        return used[-1]

    monkeypatch.setattr(aggregation, "_has_rollups", spy)
    with TestClient(create_app(settings)) as client:
        from_rollups = answers(client, periods)
    assert used and all(used), "the day and month buckets came from the rollups"
    used.clear()
    off = settings.model_copy(update={"api": settings.api.model_copy(update={"rollups": False})})
    with TestClient(create_app(off)) as client:
        from_hours = answers(client, periods)
    assert used and not any(used), "api.rollups = false: from the hourly rows"
    for key, expected in from_hours.items():
        assert from_rollups[key] == expected, key
    return sum(len(a["locations"]) for a in from_hours.values())


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
    seed = int(os.environ.get("IOTMON_TEST_SEED") or random.randrange(1 << 30))
    print(f"seed {seed}")
    rng = random.Random(seed)
    # Ten weeks up to the current hour (the current day answered in real time), and the
    # weeks around the spring DST change of 2026 (8 March in Los Angeles and New York),
    # across month ends, with gaps and provisional hours among the finals.
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    spans = [
        (datetime(2026, 2, 20, tzinfo=UTC), datetime(2026, 4, 10, tzinfo=UTC)),
        (now - timedelta(days=70), now),
    ]
    records: list[HourlyAggregate] = []
    gaps: list[HourlyAggregate] = []
    for first, last in spans:
        for loc, _f, _b, _fl, zone in PLACES:
            hour = first
            while hour <= last:
                record = hourly(f"TEMPIOT-{loc}", loc, zone, hour, rng, final=rng.random() < 0.9)
                (records if rng.random() < 0.85 else gaps).append(record)
                hour += timedelta(hours=rng.choice((1, 1, 1, 2, 5)))
    live = sinks.start("aggregates")
    send_hours(sinks, records)
    live.wait_records(len(records))
    # The sink's batches held hours of earlier days: materialized as it wrote them.
    assert materialized(db, "loc_daily", "SELECT count(*) FROM loc_daily")[0][0] > 0
    assert materialized(db, "floor_monthly", "SELECT count(*) FROM floor_monthly")[0][0] > 0

    # The API's sessions in a zone with DST: the range bounds must not depend on it.
    url = psycopg.conninfo.make_conninfo(db.url, options="-c TimeZone=America/New_York")
    settings = stack.model_copy(update={"kafka": kafka, "db": db.model_copy(update={"url": url})})
    periods = month_periods(spans)
    assert compare(settings, periods, monkeypatch) > 50, f"seed {seed}"

    # Changes to materialized days: hours that were missing, and finals for provisional
    # hours, written by the sink weeks late.  The rollups follow at once.
    today = now.replace(hour=0)
    late = [r for r in gaps if r.hour_start < today]
    finals = [
        hourly(
            r.sensor_id, r.loc_id, next(p[4] for p in PLACES if p[0] == r.loc_id), r.hour_start, rng
        )
        for r in records
        if not r.is_final and r.hour_start < today
    ]
    assert late and finals
    send_hours(sinks, late + finals)
    live.wait_records(len(records) + len(late) + len(finals))
    assert compare(settings, periods, monkeypatch) > 50, f"seed {seed}"


def test_the_sink_refreshes_an_earlier_day_it_writes_at_once(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, sinks: Sinks
) -> None:
    needs_timescaledb(db)
    rng = random.Random(7)
    # A day of the previous month: its daily and monthly buckets are both complete.
    this_month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    day = (this_month - timedelta(days=20)).replace(hour=3)
    live = sinks.start("aggregates")
    first = [
        hourly("TEMPIOT-R001", "R001", ZONES[0], day + timedelta(hours=h), rng) for h in (0, 1)
    ]
    send_hours(sinks, first)
    live.wait_records(2)
    bucket = f"bucket = '{day:%Y-%m-%d}'"
    ym = f"ym = '{day.astimezone(ZoneInfo(ZONES[0])):%Y%m}'"
    views = {
        "loc_daily": "SELECT sum(temperature_count) FROM loc_daily WHERE loc_id = 'R001'"
        f" AND {bucket}",
        "loc_monthly": "SELECT sum(temperature_count) FROM loc_monthly WHERE loc_id = 'R001'"
        f" AND {ym}",
        "floor_daily": "SELECT sum(temperature_count) FROM floor_daily WHERE factory = 'F1'"
        f" AND building = 'B1' AND floor = 1 AND {bucket}",
        "floor_monthly": "SELECT sum(temperature_count) FROM floor_monthly WHERE factory = 'F1'"
        f" AND building = 'B1' AND floor = 1 AND {ym}",
    }
    n = sum(temp(r).count for r in first)
    for view, statement in views.items():
        assert materialized(db, view, statement) == [(n,)], view
    # Another hour of that (materialized) day, weeks late: in every rollup at once, not at
    # the policy's next run (15 minutes).
    late = hourly("TEMPIOT-R001", "R001", ZONES[0], day + timedelta(hours=5), rng)
    send_hours(sinks, [late])
    live.wait_records(3)
    total = n + temp(late).count
    for view, statement in views.items():
        assert materialized(db, view, statement) == [(total,)], view
    assert live.metric("iotmon_sink_rows_total") == 3


def test_a_failed_refresh_is_left_to_the_policy_never_a_dead_letter(
    stack: Settings,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    sinks: Sinks,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rows are committed before the refresh: a refresh that fails (another one of the
    same rollup outlasting the wait, or anything unexpected) is logged, and the batch is
    neither written again nor dead-lettered."""
    rng = random.Random(5)
    day = datetime.now(UTC).replace(hour=4, minute=0, second=0, microsecond=0) - timedelta(days=3)
    failures = iter(
        [
            psycopg.errors.LockNotAvailable("could not refresh: a concurrent refresh"),
            TypeError("can't compare offset-naive and offset-aware datetimes"),
        ]
    )

    def failing(*args: Any, **kwargs: Any) -> list[str]:
        raise next(failures)

    monkeypatch.setattr(rollups, "refresh", failing)  # what the sink calls
    live = sinks.start("aggregates")
    for h in (0, 1):
        send_hours(sinks, [hourly("TEMPIOT-R003", "R003", ZONES[2], day + timedelta(hours=h), rng)])
        live.wait_records(h + 1)
    assert live.metric("iotmon_sink_rows_total") == 2
    stage = {"stage": "sink.aggregates"}
    assert live.registry.get_sample_value("iotmon_stage_poison_total", stage) in (None, 0.0)
    assert query(db, "SELECT count(*) FROM hourly_aggregates") == [(2,)]
    assert live.thread.is_alive()


def stored(
    sinks: Sinks, live: RunningSink, place: str, start: datetime, hours: range, seed: int
) -> list[HourlyAggregate]:
    """Hours of one location's sensor from ``start``, written through the running sink."""
    zone = next(p[4] for p in PLACES if p[0] == place)
    rng = random.Random(seed)
    rows = [hourly(f"TEMPIOT-{place}", place, zone, start + timedelta(hours=h), rng) for h in hours]
    send_hours(sinks, rows)
    live.wait_records(len(rows))
    return rows


def test_a_moved_location_moves_its_past_days_between_floors(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, sinks: Sinks
) -> None:
    needs_timescaledb(db)
    day = datetime.now(UTC).replace(hour=2, minute=0, second=0, microsecond=0) - timedelta(days=3)
    live = sinks.start("aggregates")
    rows = stored(sinks, live, "R004", day, range(6), seed=11)
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
    day = datetime.now(UTC).replace(hour=1, minute=0, second=0, microsecond=0) - timedelta(days=2)
    live = sinks.start("aggregates")
    rows = stored(sinks, live, "R002", day, range(4), seed=3)
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
