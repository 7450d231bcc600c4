"""Master data, with the original system's contract (`/api/v1/location`, singular).

Rows are one per sensor with its location's fields, as the original answered.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from api.deps import AppSettings, CanOperate, CanRead, Conn
from producers.masterdata import MasterData, import_master_data
from schemas.master import LOC_ID_PATTERN, SENSOR_ID_PATTERN, Location, Sensor

router = APIRouter(prefix="/location", tags=["location"])

_SELECT = sql.SQL(
    "SELECT s.sensor_id, s.name AS sensor_name, l.loc_id, l.plant, l.factory, l.building,"
    " l.floor, l.area, l.location_name, l.is_active, l.timezone"
    " FROM sensors s JOIN locations l USING (loc_id)"
)
_MAX_BATCH = 200


class SensorLocation(BaseModel):
    sensor_id: str
    sensor_name: str | None
    loc_id: str
    plant: str | None
    factory: str
    building: str | None
    floor: int | None
    area: str | None
    location_name: str | None
    is_active: bool
    timezone: str


class SensorLocationIn(BaseModel):
    """A sensor and the location it is installed at (created or updated together)."""

    sensor: Sensor
    location: Location


async def _rows(
    conn: Conn,
    where: sql.Composable,
    params: tuple[Any, ...],
    skip: int = 0,
    limit: int | None = None,
) -> list[SensorLocation]:
    query = sql.SQL("{} WHERE {} ORDER BY s.sensor_id OFFSET %s").format(_SELECT, where)
    args: tuple[Any, ...] = (*params, skip)
    if limit is not None:
        query = sql.SQL("{} LIMIT %s").format(query)
        args = (*args, limit)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, args)
        return [SensorLocation.model_validate(r) for r in await cur.fetchall()]


def _ids(raw: str, pattern: str, what: str) -> list[str]:
    ids = [i.strip() for i in raw.split(",") if i.strip()]
    if not ids or len(ids) > _MAX_BATCH:
        raise HTTPException(422, f"give 1 to {_MAX_BATCH} comma-separated {what}")
    bad = [i for i in ids if not re.match(pattern, i)]
    if bad:
        raise HTTPException(422, f"invalid {what}: {', '.join(b[:40] for b in bad[:5])}")
    return ids


@router.get("/", dependencies=[CanRead])
async def list_locations(
    conn: Conn,
    skip: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    factory: Annotated[str | None, Query(max_length=100)] = None,
    building: Annotated[str | None, Query(max_length=100)] = None,
    floor: Annotated[int | None, Query(ge=-100, le=500)] = None,
    area: Annotated[str | None, Query(max_length=100)] = None,
) -> list[SensorLocation]:
    conditions: list[sql.Composable] = [sql.SQL("true")]
    params: list[Any] = []
    for column, value in (
        ("factory", factory),
        ("building", building),
        ("floor", floor),
        ("area", area),
    ):
        if value is not None:
            conditions.append(sql.SQL("{} = %s").format(sql.Identifier("l", column)))
            params.append(value)
    return await _rows(conn, sql.SQL(" AND ").join(conditions), tuple(params), skip, limit)


@router.get("/batch/{sensor_ids}", dependencies=[CanRead])
async def sensors_batch(conn: Conn, sensor_ids: str) -> list[SensorLocation]:
    ids = _ids(sensor_ids, SENSOR_ID_PATTERN, "sensor ids")
    return await _rows(conn, sql.SQL("s.sensor_id = ANY(%s)"), (ids,))


@router.get("/loc/batch/{loc_ids}", dependencies=[CanRead])
async def locations_batch(conn: Conn, loc_ids: str) -> list[SensorLocation]:
    ids = _ids(loc_ids, LOC_ID_PATTERN, "location ids")
    return await _rows(conn, sql.SQL("l.loc_id = ANY(%s)"), (ids,))


@router.get("/loc/{loc_id}", dependencies=[CanRead])
async def location(
    conn: Conn, loc_id: Annotated[str, Path(pattern=LOC_ID_PATTERN)]
) -> list[SensorLocation]:
    rows = await _rows(conn, sql.SQL("l.loc_id = %s"), (loc_id,))
    if not rows:
        raise HTTPException(404, f"location {loc_id} has no registered sensor")
    return rows


@router.get("/{sensor_id}", dependencies=[CanRead])
async def sensor(
    conn: Conn, sensor_id: Annotated[str, Path(pattern=SENSOR_ID_PATTERN)]
) -> SensorLocation:
    rows = await _rows(conn, sql.SQL("s.sensor_id = %s"), (sensor_id,))
    if not rows:
        raise HTTPException(404, f"sensor {sensor_id} is not registered")
    return rows[0]


@router.post("/", dependencies=[CanOperate])
async def upsert_sensor(
    conn: Conn, settings: AppSettings, body: SensorLocationIn
) -> SensorLocation:
    """Create or update a sensor with its location; running stream apps see it within
    seconds (compacted sensors topic)."""
    if body.sensor.loc_id != body.location.loc_id:
        raise HTTPException(422, "sensor.loc_id must equal location.loc_id")
    await run_in_threadpool(
        import_master_data, settings.db, settings.kafka, MasterData([body.location], [body.sensor])
    )
    rows = await _rows(conn, sql.SQL("s.sensor_id = %s"), (body.sensor.sensor_id,))
    return rows[0]
