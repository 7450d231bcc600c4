"""Master data, with the original system's contract (`/api/v1/location`, singular).

Rows are one per sensor with its location's fields, as the original answered.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, UploadFile
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from api.changes import DataChanges
from api.deps import AppSettings, CanOperate, CanRead, Conn
from api.filters import equal
from iotmon.db import rollups
from producers.masterdata import (
    MasterData,
    MasterDataError,
    from_rows,
    import_master_data,
    publish,
)
from schemas.master import (
    GATEWAY_PATTERN,
    LOC_ID_PATTERN,
    SENSOR_ID_PATTERN,
    Location,
    Sensor,
    SensorRecord,
)

router = APIRouter(prefix="/location", tags=["location"])

_SELECT = sql.SQL(
    "SELECT s.sensor_id, s.name AS sensor_name, s.gateway, l.loc_id, l.plant, l.factory,"
    " l.building,"
    " l.floor, l.area, l.location_name, l.is_active, l.timezone"
    " FROM sensors s JOIN locations l USING (loc_id)"
)
_MAX_BATCH = 200
_MAX_UPLOAD_BYTES = 5 * 1024 * 1024
# The whole multipart request of an upload (the file and its envelope), enforced before it
# is read (api/limits.py).
MAX_UPLOAD_REQUEST_BYTES = _MAX_UPLOAD_BYTES + 64 * 1024
_CSV_COLUMNS = {*Location.model_fields, "sensor_id", "name", "gateway"}


class SensorLocation(BaseModel):
    sensor_id: str
    sensor_name: str | None
    gateway: str | None = None  # the only gateway whose readings of it are accepted
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


class SensorPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    loc_id: str | None = Field(None, pattern=LOC_ID_PATTERN)
    name: str | None = Field(None, max_length=200)
    is_active: bool | None = None
    gateway: str | None = Field(None, pattern=GATEWAY_PATTERN)


class LocationPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plant: str | None = Field(None, max_length=100)
    factory: str | None = Field(None, min_length=1, max_length=100)
    building: str | None = Field(None, max_length=100)
    floor: int | None = Field(None, ge=-100, le=500)
    area: str | None = Field(None, max_length=100)
    location_name: str | None = Field(None, max_length=200)
    is_active: bool | None = None
    timezone: str | None = Field(None, max_length=64)


class SensorLocationPatch(BaseModel):
    """Any subset of the sensor's fields and of its location's; moving the sensor
    (``sensor.loc_id``) applies the location fields to the location it moves to."""

    model_config = ConfigDict(extra="forbid")

    sensor: SensorPatch = SensorPatch()
    location: LocationPatch = LocationPatch()


class ImportSummary(BaseModel):
    locations: int
    sensors: int
    published: int


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
    conditions, params = equal(
        {"factory": factory, "building": building, "floor": floor, "area": area}, "l"
    )
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


def _changed(request: Request) -> None:
    """Realtime answers of this process rendered before the change are not reused."""
    changes: DataChanges | None = getattr(request.app.state, "changes", None)
    if changes is not None:
        changes.changed()


@router.post("/", dependencies=[CanOperate])
async def upsert_sensor(
    request: Request, conn: Conn, settings: AppSettings, body: SensorLocationIn
) -> SensorLocation:
    """Create or update a sensor with its location; running stream apps see it within
    seconds (compacted sensors topic)."""
    if body.sensor.loc_id != body.location.loc_id:
        raise HTTPException(422, "sensor.loc_id must equal location.loc_id")
    await run_in_threadpool(
        import_master_data, settings.db, settings.kafka, MasterData([body.location], [body.sensor])
    )
    _changed(request)
    rows = await _rows(conn, sql.SQL("s.sensor_id = %s"), (body.sensor.sensor_id,))
    return rows[0]


def _merged(doc: dict[str, Any], model: type[Location] | type[Sensor]) -> Any:
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise HTTPException(
            422,
            "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()),
        ) from None


@router.put("/{sensor_id}", dependencies=[CanOperate])
async def update_sensor(
    request: Request,
    conn: Conn,
    settings: AppSettings,
    sensor_id: Annotated[str, Path(pattern=SENSOR_ID_PATTERN)],
    body: SensorLocationPatch,
) -> SensorLocation:
    """Change a registered sensor and/or its location (the merged result is validated)."""
    rows = await _rows(conn, sql.SQL("s.sensor_id = %s"), (sensor_id,))
    if not rows:
        raise HTTPException(404, f"sensor {sensor_id} is not registered")
    current = rows[0]
    sensor_changes = body.sensor.model_dump(exclude_unset=True)
    loc_id = sensor_changes.get("loc_id") or current.loc_id
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT loc_id, plant, factory, building, floor, area, location_name, is_active,"
            " timezone FROM locations WHERE loc_id = %s",
            (loc_id,),
        )
        base = await cur.fetchone() or {}
    location = _merged(
        {**base, **body.location.model_dump(exclude_unset=True), "loc_id": loc_id}, Location
    )
    sensor = _merged(
        {
            "sensor_id": sensor_id,
            "loc_id": loc_id,
            "name": current.sensor_name,
            "gateway": current.gateway,
            "is_active": True,
            **sensor_changes,
        },
        Sensor,
    )
    await conn.rollback()  # end the read transaction before the import's own connection
    await run_in_threadpool(
        import_master_data, settings.db, settings.kafka, MasterData([location], [sensor])
    )
    _changed(request)
    return (await _rows(conn, sql.SQL("s.sensor_id = %s"), (sensor_id,)))[0]


@router.delete("/{sensor_id}", dependencies=[CanOperate])
async def delete_sensor(
    request: Request,
    conn: Conn,
    settings: AppSettings,
    sensor_id: Annotated[str, Path(pattern=SENSOR_ID_PATTERN)],
) -> SensorLocation:
    """Unregister a sensor: its readings are then dead-lettered as from an unknown sensor,
    and it leaves the realtime view.  History (readings, aggregates, alerts) is kept."""
    rows = await _rows(conn, sql.SQL("s.sensor_id = %s"), (sensor_id,))
    if not rows:
        raise HTTPException(404, f"sensor {sensor_id} is not registered")
    current = rows[0]
    await conn.execute("DELETE FROM sensors WHERE sensor_id = %s", (sensor_id,))
    await conn.execute("DELETE FROM latest_readings WHERE sensor_id = %s", (sensor_id,))
    await conn.commit()
    _changed(request)
    record = SensorRecord(
        sensor=Sensor(sensor_id=sensor_id, loc_id=current.loc_id, name=current.sensor_name),
        location=Location.model_validate(
            current.model_dump(exclude={"sensor_id", "sensor_name", "gateway"})
        ),
        deleted=True,
        updated_at=datetime.now(UTC),
    )
    await run_in_threadpool(publish, settings.kafka, [record])
    return current


@router.delete("/loc/{loc_id}", dependencies=[CanOperate])
async def delete_location(
    request: Request,
    conn: Conn,
    settings: AppSettings,
    loc_id: Annotated[str, Path(pattern=LOC_ID_PATTERN)],
) -> dict[str, str]:
    """Delete a location that no sensor is installed at (409 otherwise)."""
    async with conn.cursor() as cur:
        await cur.execute("SELECT count(*) FROM sensors WHERE loc_id = %s", (loc_id,))
        row = await cur.fetchone()
        if row is not None and row[0]:
            raise HTTPException(
                409, f"location {loc_id} still has {row[0]} sensor(s); move or delete them first"
            )
        await cur.execute("DELETE FROM locations WHERE loc_id = %s", (loc_id,))
        deleted = cur.rowcount
    await conn.commit()
    if deleted:
        # Its past hours left the floor rollup: the daily and monthly rollups follow now.
        await run_in_threadpool(rollups.refresh_all, settings.db)
    _changed(request)
    if not deleted:
        raise HTTPException(404, f"location {loc_id} does not exist")
    return {"deleted": loc_id}


@router.post("/upload", dependencies=[CanOperate])
async def upload(request: Request, settings: AppSettings, file: UploadFile) -> ImportSummary:
    """Import a CSV file with one row per sensor and its location's columns (the format of
    `iotmon locations import`), all or nothing."""
    raw = await file.read(_MAX_UPLOAD_BYTES + 1)
    if len(raw) > _MAX_UPLOAD_BYTES:
        raise HTTPException(413, f"the file exceeds {_MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise HTTPException(422, "the file is not UTF-8 text") from None
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise HTTPException(422, "the file has no rows (a header row, then one row per sensor)")
    unknown = set(rows[0]) - _CSV_COLUMNS
    if unknown:
        raise HTTPException(422, f"unknown columns: {', '.join(sorted(str(u) for u in unknown))}")
    try:
        data = from_rows(rows)
    except MasterDataError as exc:
        raise HTTPException(422, str(exc)) from None
    records = await run_in_threadpool(import_master_data, settings.db, settings.kafka, data)
    _changed(request)
    return ImportSummary(
        locations=len(data.locations), sensors=len(data.sensors), published=len(records)
    )
