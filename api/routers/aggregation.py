"""Hourly, daily and monthly aggregates, with the original system's contract
(`/api/v1/aggregation/{metric}/...`) and its defects fixed: buckets in chronological order,
daily and monthly averages weighted by reading count (sum/count over raw readings), bad
dates answered 422 naming the parameter, no data answered 200 with an empty list.  Rows of
hours still open are included and marked ``provisional``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query
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


async def _aggregate(
    conn: Conn, level: str, period: Period, where: dict[str, Any]
) -> AggregationResponse:
    group = _LEVEL_COLUMNS[level]
    ymd, hour = _BUCKETS[period.bucket]
    # Per location: the sensors' hourly rows with their places.  Per floor, building or
    # factory: the floor rollup (migration 007), one row per floor-hour.
    if level == "location":
        source = sql.SQL("hourly_aggregates a JOIN locations l ON l.loc_id = a.loc_id")
        place = "l"
    else:
        source, place = sql.SQL("floor_hourly a"), "a"
    group_sql = sql.SQL(", ").join(sql.Identifier(place, c) for c in group)
    # ymd is the location's local date; the hour_start bounds (local dates widened by the
    # largest UTC offsets) only let the planner use the time indexes, they never cut rows.
    conditions: list[sql.Composable] = [
        sql.SQL("a.ymd BETWEEN %s AND %s"),
        sql.SQL(
            "a.hour_start >= to_date(%s, 'YYYYMMDD')::timestamp AT TIME ZONE 'UTC'"
            " - interval '14 hours'"
        ),
        sql.SQL(
            "a.hour_start < to_date(%s, 'YYYYMMDD')::timestamp AT TIME ZONE 'UTC'"
            " + interval '1 day 12 hours'"
        ),
    ]
    params: list[Any] = [period.first_ymd, period.last_ymd, period.first_ymd, period.last_ymd]
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
    conn: Conn, metric: Metric, start_date: StartDate, end_date: EndDate
) -> AggregationResponse:
    return await _aggregate(conn, "location", _period(start_date, end_date), {})


@router.get("/{metric}/location/{loc_id}", dependencies=[CanRead])
async def one_location(
    conn: Conn,
    metric: Metric,
    loc_id: Annotated[str, Path(pattern=LOC_ID_PATTERN)],
    start_date: StartDate,
    end_date: EndDate,
) -> AggregationResponse:
    return await _aggregate(conn, "location", _period(start_date, end_date), {"loc_id": loc_id})


@router.get("/{metric}/factory/{factory}", dependencies=[CanRead])
async def factory_level(
    conn: Conn,
    metric: Metric,
    factory: Annotated[str, Path(max_length=100)],
    start_date: StartDate,
    end_date: EndDate,
) -> AggregationResponse:
    return await _aggregate(conn, "factory", _period(start_date, end_date), {"factory": factory})


@router.get("/{metric}/building/{factory}/{building}", dependencies=[CanRead])
async def building_level(
    conn: Conn,
    metric: Metric,
    factory: Annotated[str, Path(max_length=100)],
    building: Annotated[str, Path(max_length=100)],
    start_date: StartDate,
    end_date: EndDate,
) -> AggregationResponse:
    return await _aggregate(
        conn, "building", _period(start_date, end_date), {"factory": factory, "building": building}
    )


@router.get("/{metric}/floor/{factory}/{building}/{floor}", dependencies=[CanRead])
async def floor_level(
    conn: Conn,
    metric: Metric,
    factory: Annotated[str, Path(max_length=100)],
    building: Annotated[str, Path(max_length=100)],
    floor: Annotated[int, Path(ge=-100, le=500)],
    start_date: StartDate,
    end_date: EndDate,
) -> AggregationResponse:
    return await _aggregate(
        conn,
        "floor",
        _period(start_date, end_date),
        {"factory": factory, "building": building, "floor": floor},
    )
