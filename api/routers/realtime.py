"""Latest measurements, with the original system's contract (`/api/v1/realtime`) and its
defects fixed: ``ymd``/``hh`` are the factory-local date and hour of the newest reading *in
the result* (never the server clock), every measurement says how old it is and whether it is
stale, and unknown filters give an empty list."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import psycopg
from fastapi import APIRouter, Path, Query, Request, Response
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from api.deps import AppSettings, CanRead
from iotmon.settings import Settings

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


class ResponseCache:
    """Rendered answers kept for ``ttl_s`` seconds per key; concurrent requests for a key
    that is being rendered wait for that one rendering instead of querying again."""

    def __init__(self, ttl_s: float, max_keys: int = 1000) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._entries: dict[Hashable, tuple[float, bytes]] = {}
        self._locks: dict[Hashable, asyncio.Lock] = {}

    async def get(self, key: Hashable, render: Callable[[], Awaitable[bytes]]) -> bytes:
        if self.ttl_s <= 0:
            return await render()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > time.monotonic():
                return entry[1]
            body = await render()
            if len(self._entries) >= self.max_keys:
                self._entries.clear()
                self._locks = {key: lock}
            self._entries[key] = (time.monotonic() + self.ttl_s, body)
            return body


async def _answer(request: Request, settings: Settings, where: dict[str, Any]) -> Response:
    cache: ResponseCache | None = getattr(request.app.state, "realtime_cache", None)
    if cache is None:
        cache = request.app.state.realtime_cache = ResponseCache(settings.api.realtime_cache_s)

    async def render() -> bytes:
        pool: AsyncConnectionPool = request.app.state.pool
        async with pool.connection() as conn:
            result = await _realtime(conn, settings, where)
        return result.model_dump_json().encode()

    key = tuple(sorted((k, v) for k, v in where.items() if v is not None))
    return Response(await cache.get(key, render), media_type="application/json")


async def _realtime(
    conn: psycopg.AsyncConnection[Any], settings: Settings, where: dict[str, Any]
) -> RealtimeResponse:
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


@router.get("/", dependencies=[CanRead], response_model=RealtimeResponse)
async def everything(request: Request, settings: AppSettings) -> Response:
    return await _answer(request, settings, {})


@router.get("/factory/{factory}", dependencies=[CanRead], response_model=RealtimeResponse)
async def by_factory(request: Request, settings: AppSettings, factory: Text) -> Response:
    return await _answer(request, settings, {"factory": factory})


@router.get("/building/{building}", dependencies=[CanRead], response_model=RealtimeResponse)
async def by_building(request: Request, settings: AppSettings, building: Text) -> Response:
    return await _answer(request, settings, {"building": building})


@router.get("/floor/{floor}", dependencies=[CanRead], response_model=RealtimeResponse)
async def by_floor(
    request: Request, settings: AppSettings, floor: Annotated[int, Path(ge=-100, le=500)]
) -> Response:
    return await _answer(request, settings, {"floor": floor})


@router.get("/loc_id/{loc_id}", dependencies=[CanRead], response_model=RealtimeResponse)
async def by_loc_id(request: Request, settings: AppSettings, loc_id: Text) -> Response:
    return await _answer(request, settings, {"loc_id": loc_id})


@router.get("/location", dependencies=[CanRead], response_model=RealtimeResponse)
async def by_location(
    request: Request,
    settings: AppSettings,
    factory: Annotated[str | None, Query(max_length=100)] = None,
    building: Annotated[str | None, Query(max_length=100)] = None,
    floor: Annotated[int | None, Query(ge=-100, le=500)] = None,
    loc_id: Annotated[str | None, Query(max_length=100)] = None,
) -> Response:
    return await _answer(
        request,
        settings,
        {"factory": factory, "building": building, "floor": floor, "loc_id": loc_id},
    )
