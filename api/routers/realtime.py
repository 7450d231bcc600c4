"""Latest measurements, with the original system's contract (`/api/v1/realtime`) and its
defects fixed: ``ymd``/``hh`` are the factory-local date and hour of the newest reading *in
the result* (never the server clock), every measurement says how old it is and whether it is
stale, and unknown filters give an empty list."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path, Query
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import BaseModel

from api.deps import AppSettings, CanRead, Conn

router = APIRouter(prefix="/realtime", tags=["realtime"])

_SELECT = sql.SQL(
    "SELECT r.sensor_id, r.capture_dt, r.temperature, r.humidity, r.pcv_temperature,"
    " r.temperature_status, r.humidity_status, r.pcv_temperature_status,"
    " l.factory, l.building, l.floor, l.loc_id, l.area, l.timezone"
    " FROM latest_readings r JOIN locations l ON l.loc_id = r.loc_id"
)


class Place(BaseModel):
    factory: str
    building: str | None
    floor: int | None
    loc_id: str
    area: str | None


class Value(BaseModel):
    value: str | None
    status: str | None


class Measurement(BaseModel):
    sensor_id: str
    location: Place
    metrics: dict[str, Value]
    capture_dt: datetime
    age_seconds: float
    stale: bool


class RealtimeResponse(BaseModel):
    capture_dt: datetime | None
    ymd: str | None
    hh: str | None
    measurements: list[Measurement]


def decimal_text(value: Decimal | None) -> str | None:
    """As the sensors report it: no trailing zeros beyond one decimal ("22.1", "30.0")."""
    if value is None:
        return None
    text = f"{value:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


async def _realtime(conn: Conn, settings: AppSettings, where: dict[str, Any]) -> RealtimeResponse:
    conditions: list[sql.Composable] = [sql.SQL("l.is_active")]
    params: list[Any] = []
    for column, value in where.items():
        if value is not None:
            conditions.append(sql.SQL("{} = %s").format(sql.Identifier("l", column)))
            params.append(value)
    query = sql.SQL(
        "{} WHERE {} ORDER BY l.factory, l.building, l.floor, l.loc_id, r.sensor_id"
    ).format(_SELECT, sql.SQL(" AND ").join(conditions))
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        rows = await cur.fetchall()
    now = datetime.now(UTC)
    stale_after = settings.api.stale_after_s
    measurements = []
    for r in rows:
        age = max(0.0, (now - r["capture_dt"]).total_seconds())
        measurements.append(
            Measurement(
                sensor_id=r["sensor_id"],
                location=Place.model_validate(r),
                metrics={
                    m: Value(value=decimal_text(r[m]), status=r[f"{m}_status"])
                    for m in ("temperature", "humidity", "pcv_temperature")
                },
                capture_dt=r["capture_dt"],
                age_seconds=round(age, 3),
                stale=age > stale_after,
            )
        )
    if not rows:
        return RealtimeResponse(capture_dt=None, ymd=None, hh=None, measurements=[])
    newest = max(rows, key=lambda r: r["capture_dt"])
    local = newest["capture_dt"].astimezone(ZoneInfo(newest["timezone"]))
    return RealtimeResponse(
        capture_dt=newest["capture_dt"],
        ymd=f"{local:%Y%m%d}",
        hh=f"{local:%H}",
        measurements=measurements,
    )


Text = Annotated[str, Path(max_length=100)]


@router.get("/", dependencies=[CanRead])
async def everything(conn: Conn, settings: AppSettings) -> RealtimeResponse:
    return await _realtime(conn, settings, {})


@router.get("/factory/{factory}", dependencies=[CanRead])
async def by_factory(conn: Conn, settings: AppSettings, factory: Text) -> RealtimeResponse:
    return await _realtime(conn, settings, {"factory": factory})


@router.get("/building/{building}", dependencies=[CanRead])
async def by_building(conn: Conn, settings: AppSettings, building: Text) -> RealtimeResponse:
    return await _realtime(conn, settings, {"building": building})


@router.get("/floor/{floor}", dependencies=[CanRead])
async def by_floor(
    conn: Conn, settings: AppSettings, floor: Annotated[int, Path(ge=-100, le=500)]
) -> RealtimeResponse:
    return await _realtime(conn, settings, {"floor": floor})


@router.get("/loc_id/{loc_id}", dependencies=[CanRead])
async def by_loc_id(conn: Conn, settings: AppSettings, loc_id: Text) -> RealtimeResponse:
    return await _realtime(conn, settings, {"loc_id": loc_id})


@router.get("/location", dependencies=[CanRead])
async def by_location(
    conn: Conn,
    settings: AppSettings,
    factory: Annotated[str | None, Query(max_length=100)] = None,
    building: Annotated[str | None, Query(max_length=100)] = None,
    floor: Annotated[int | None, Query(ge=-100, le=500)] = None,
    loc_id: Annotated[str | None, Query(max_length=100)] = None,
) -> RealtimeResponse:
    return await _realtime(
        conn, settings, {"factory": factory, "building": building, "floor": floor, "loc_id": loc_id}
    )
