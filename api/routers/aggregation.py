"""Hourly, daily and monthly aggregates, with the original system's contract
(`/api/v1/aggregation/{metric}/...`) and its defects fixed: buckets in chronological order,
daily and monthly averages weighted by reading count (sum/count over raw readings), bad
dates answered 422 naming the parameter, no data answered 200 with an empty list.  Rows of
hours still open are included and marked ``provisional``."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from psycopg import sql
from pydantic import BaseModel

from api.deps import CanRead, Conn
from api.periods import Period, PeriodError, parse_period
from schemas.common import Metric
from schemas.master import LOC_ID_PATTERN

router = APIRouter(prefix="/aggregation", tags=["aggregation"])

_LEVEL_COLUMNS = {
    "location": ("factory", "building", "floor", "loc_id", "area"),
    "floor": ("factory", "building", "floor"),
    "building": ("factory", "building"),
    "factory": ("factory",),
}
_METRIC_SQL = sql.SQL(
    "round(max(a.pcv_temperature_max), 2)::text,"
    " round(sum(a.pcv_temperature_sum) / nullif(sum(a.pcv_temperature_count), 0), 2)::text,"
    " round(max(a.temperature_max), 2)::text,"
    " round(sum(a.temperature_sum) / nullif(sum(a.temperature_count), 0), 2)::text,"
    " round(max(a.humidity_max), 2)::text,"
    " round(sum(a.humidity_sum) / nullif(sum(a.humidity_count), 0), 2)::text,"
    " bool_and(a.is_final)"
)
_BUCKETS = {
    "hour": (sql.SQL("a.ymd::text"), sql.SQL("a.hour::text")),
    "day": (sql.SQL("a.ymd::text"), sql.SQL("'00'")),
    "month": (sql.SQL("substr(a.ymd, 1, 6)"), sql.SQL("'00'")),
}


class Metrics(BaseModel):
    pcv_temperature_max: str | None
    pcv_temperature_avg: str | None
    temperature_max: str | None
    temperature_avg: str | None
    humidity_max: str | None
    humidity_avg: str | None


class Bucket(BaseModel):
    ymd: str
    hour: str
    provisional: bool
    metrics: Metrics


class Series(BaseModel):
    factory: str
    building: str | None = None
    floor: int | None = None
    loc_id: str | None = None
    area: str | None = None
    date: list[Bucket]


class AggregationResponse(BaseModel):
    locations: list[Series]


_DATE = r"^(\d{4}|\d{6}|\d{8})$"
StartDate = Annotated[str, Query(pattern=_DATE, description="yyyy, yyyyMM or yyyyMMdd")]
EndDate = Annotated[str, Query(pattern=_DATE, description="yyyy, yyyyMM or yyyyMMdd, inclusive")]


def _period(start_date: str, end_date: str) -> Period:
    try:
        return parse_period(start_date, end_date)
    except PeriodError as exc:
        raise HTTPException(422, str(exc)) from None


# The daily and monthly rollups (TimescaleDB continuous aggregates, migration 012): per
# bucket, the source that has one row per UTC bucket and local date (or month), its local
# date column and how the local date of a bucket is read from it.
_ROLLUPS = {
    ("location", "day"): ("loc_daily", "ymd"),
    ("location", "month"): ("loc_monthly", "ym"),
    ("floor", "day"): ("floor_daily", "ymd"),
    ("floor", "month"): ("floor_monthly", "ym"),
}
_ROLLUP_BUCKETS = {
    "day": (sql.SQL("a.ymd::text"), sql.SQL("'00'")),
    "month": (sql.SQL("a.ym"), sql.SQL("'00'")),
}
_ROLLUPS_CHECK_S = 30.0


async def _has_rollups(request: Request, conn: Conn) -> bool:
    """Whether the schema has the rollups; looked up at most every 30 s.  Answers are the
    same either way (the hourly sources stay maintained), only slower without them."""
    state = request.app.state
    if not state.settings.api.rollups:
        return False
    checked: tuple[float, bool] | None = getattr(state, "rollups_checked", None)
    now = time.monotonic()
    if checked is None or now - checked[0] > _ROLLUPS_CHECK_S:
        cursor = await conn.execute(
            "SELECT count(*) = 4 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relkind = 'v' AND c.relname IN"
            " ('loc_daily', 'loc_monthly', 'floor_daily', 'floor_monthly')"
        )
        row = await cursor.fetchone()
        checked = (now, bool(row and row[0]))
        state.rollups_checked = checked
    return checked[1]


async def _aggregate(
    request: Request, conn: Conn, level: str, period: Period, where: dict[str, Any]
) -> AggregationResponse:
    group = _LEVEL_COLUMNS[level]
    rollup = None
    if period.bucket != "hour" and await _has_rollups(request, conn):
        rollup = _ROLLUPS[("location" if level == "location" else "floor", period.bucket)]
    # Per location: the sensors' hourly rows (or daily or monthly rollups) with their places.
    # Per floor, building or factory: the floor rollup (migration 007), one row per
    # floor-hour, or its daily and monthly rollups.
    table = (
        sql.Identifier(rollup[0])
        if rollup
        else sql.Identifier("hourly_aggregates" if level == "location" else "floor_hourly")
    )
    if level == "location":
        source = sql.SQL("{} a JOIN locations l ON l.loc_id = a.loc_id").format(table)
        place = "l"
    else:
        source, place = sql.SQL("{} a").format(table), "a"
    group_sql = sql.SQL(", ").join(sql.Identifier(place, c) for c in group)
    # ymd is the location's local date; the time bounds (local dates widened by the largest
    # UTC offsets, and for rollups to the UTC day or month that holds them) only let the
    # planner skip chunks, they never cut rows.  The widening is done on the date, before it
    # becomes an instant in UTC, so the session's time zone (and its DST) plays no part.
    if rollup is None:
        ymd, hour = _BUCKETS[period.bucket]
        local, time_column, before, after = "a.ymd", "a.hour_start", "14 hours", "1 day 12 hours"
        first, last = period.first_ymd, period.last_ymd
    else:
        ymd, hour = _ROLLUP_BUCKETS[period.bucket]
        local, time_column, before, after = f"a.{rollup[1]}", "a.bucket", "1 month", "2 days"
        width = 8 if rollup[1] == "ymd" else 6
        first, last = period.first_ymd[:width], period.last_ymd[:width]
    conditions: list[sql.Composable] = [
        sql.SQL("{} BETWEEN %s AND %s").format(sql.SQL(local)),
        sql.SQL("{} >= (to_date(%s, 'YYYYMMDD') - {}::interval) AT TIME ZONE 'UTC'").format(
            sql.SQL(time_column), sql.Literal(before)
        ),
        sql.SQL("{} < (to_date(%s, 'YYYYMMDD') + {}::interval) AT TIME ZONE 'UTC'").format(
            sql.SQL(time_column), sql.Literal(after)
        ),
    ]
    params: list[Any] = [first, last, period.first_ymd, period.last_ymd]
    for column, value in where.items():
        conditions.append(sql.SQL("{} = %s").format(sql.Identifier(place, column)))
        params.append(value)
    query = sql.SQL(
        "SELECT {group}, {ymd} AS b_ymd, {hour} AS b_hour, {metrics}"
        " FROM {source}"
        " WHERE {where} GROUP BY {group}, b_ymd, b_hour ORDER BY {group}, b_ymd, b_hour"
    ).format(
        source=source,
        group=group_sql,
        ymd=ymd,
        hour=hour,
        metrics=_METRIC_SQL,
        where=sql.SQL(" AND ").join(conditions),
    )
    cursor = await conn.execute(query, params)
    series: dict[tuple[Any, ...], Series] = {}
    for row in await cursor.fetchall():
        key = tuple(row[: len(group)])
        b_ymd, b_hour, *values, final = row[len(group) :]
        if key not in series:
            series[key] = Series(**dict(zip(group, key, strict=True)), date=[])
        series[key].date.append(
            Bucket(
                ymd=b_ymd,
                hour=b_hour,
                provisional=not final,
                metrics=Metrics(**dict(zip(Metrics.model_fields, values, strict=True))),
            )
        )
    return AggregationResponse(locations=list(series.values()))


@router.get("/{metric}/", dependencies=[CanRead])
async def all_locations(
    request: Request, conn: Conn, metric: Metric, start_date: StartDate, end_date: EndDate
) -> AggregationResponse:
    return await _aggregate(request, conn, "location", _period(start_date, end_date), {})


@router.get("/{metric}/location/{loc_id}", dependencies=[CanRead])
async def one_location(
    request: Request,
    conn: Conn,
    metric: Metric,
    loc_id: Annotated[str, Path(pattern=LOC_ID_PATTERN)],
    start_date: StartDate,
    end_date: EndDate,
) -> AggregationResponse:
    return await _aggregate(
        request, conn, "location", _period(start_date, end_date), {"loc_id": loc_id}
    )


@router.get("/{metric}/factory/{factory}", dependencies=[CanRead])
async def factory_level(
    request: Request,
    conn: Conn,
    metric: Metric,
    factory: Annotated[str, Path(max_length=100)],
    start_date: StartDate,
    end_date: EndDate,
) -> AggregationResponse:
    return await _aggregate(
        request, conn, "factory", _period(start_date, end_date), {"factory": factory}
    )


@router.get("/{metric}/building/{factory}/{building}", dependencies=[CanRead])
async def building_level(
    request: Request,
    conn: Conn,
    metric: Metric,
    factory: Annotated[str, Path(max_length=100)],
    building: Annotated[str, Path(max_length=100)],
    start_date: StartDate,
    end_date: EndDate,
) -> AggregationResponse:
    return await _aggregate(
        request,
        conn,
        "building",
        _period(start_date, end_date),
        {"factory": factory, "building": building},
    )


@router.get("/{metric}/floor/{factory}/{building}/{floor}", dependencies=[CanRead])
async def floor_level(
    request: Request,
    conn: Conn,
    metric: Metric,
    factory: Annotated[str, Path(max_length=100)],
    building: Annotated[str, Path(max_length=100)],
    floor: Annotated[int, Path(ge=-100, le=500)],
    start_date: StartDate,
    end_date: EndDate,
) -> AggregationResponse:
    return await _aggregate(
        request,
        conn,
        "floor",
        _period(start_date, end_date),
        {"factory": factory, "building": building, "floor": floor},
    )
