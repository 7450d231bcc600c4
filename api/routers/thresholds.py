"""Thresholds, with the original system's contract (`/api/v1/thresholds`).

Every write is validated as the merged row (a partial PUT that would leave max <= min is a
422, never a stored row), committed, then published to the compacted thresholds topic that
running workers read.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from api.deps import AppSettings, CanOperate, CanRead, Conn
from producers.thresholds import deleted_record, publish
from schemas.common import Metric
from schemas.thresholds import Level, Threshold, ThresholdRecord

router = APIRouter(prefix="/thresholds", tags=["thresholds"])

_COLUMNS = (
    "threshold_id, threshold_type, level, min_value, max_value, factory, building, floor,"
    " loc_id, hold_seconds, clear_seconds, clear_margin, upd_dt"
)
COLS = sql.SQL(_COLUMNS)
Value = Annotated[
    Decimal, Field(ge=Decimal("-999999.99"), le=Decimal("999999.99"), decimal_places=2)
]


class ThresholdIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold_type: Metric
    level: Level
    min_value: Value | None = None
    max_value: Value | None = None
    factory: str | None = Field(None, max_length=100)
    building: str | None = Field(None, max_length=100)
    floor: int | None = Field(None, ge=-100, le=500)
    loc_id: str | None = Field(None, max_length=32)
    hold_seconds: int = Field(60, ge=0, le=86400)
    clear_seconds: int = Field(60, ge=0, le=86400)
    clear_margin: Value = Decimal(0)


class ThresholdPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold_type: Metric | None = None
    level: Level | None = None
    min_value: Value | None = None
    max_value: Value | None = None
    factory: str | None = Field(None, max_length=100)
    building: str | None = Field(None, max_length=100)
    floor: int | None = Field(None, ge=-100, le=500)
    loc_id: str | None = Field(None, max_length=32)
    hold_seconds: int | None = Field(None, ge=0, le=86400)
    clear_seconds: int | None = Field(None, ge=0, le=86400)
    clear_margin: Value | None = None


def _validated(doc: dict[str, Any]) -> Threshold:
    try:
        return Threshold.model_validate(doc)
    except ValidationError as exc:
        raise HTTPException(422, "; ".join(e["msg"] for e in exc.errors())) from None


async def _get(conn: Conn, threshold_id: int) -> Threshold:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL("SELECT {} FROM thresholds WHERE threshold_id = %s").format(COLS),
            (threshold_id,),
        )
        row = await cur.fetchone()
    if row is None:
        raise HTTPException(404, f"threshold {threshold_id} does not exist")
    return Threshold.model_validate(row)


async def _publish(settings: AppSettings, record: ThresholdRecord) -> None:
    await run_in_threadpool(publish, settings.kafka, [record])


ThresholdId = Annotated[int, Path(ge=1, le=2**62)]


@router.get("/", dependencies=[CanRead])
async def list_thresholds(
    conn: Conn,
    skip: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Threshold]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL("SELECT {} FROM thresholds ORDER BY threshold_id OFFSET %s LIMIT %s").format(
                COLS
            ),
            (skip, limit),
        )
        return [Threshold.model_validate(r) for r in await cur.fetchall()]


@router.get("/type/{threshold_type}", dependencies=[CanRead])
async def thresholds_of_type(conn: Conn, threshold_type: Metric) -> list[Threshold]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL(
                "SELECT {} FROM thresholds WHERE threshold_type = %s ORDER BY threshold_id"
            ).format(COLS),
            (threshold_type,),
        )
        return [Threshold.model_validate(r) for r in await cur.fetchall()]


@router.get("/{threshold_id}", dependencies=[CanRead])
async def get_threshold(conn: Conn, threshold_id: ThresholdId) -> Threshold:
    return await _get(conn, threshold_id)


@router.post("/", status_code=201, dependencies=[CanOperate])
async def create_threshold(conn: Conn, settings: AppSettings, body: ThresholdIn) -> Threshold:
    _validated({**body.model_dump(), "threshold_id": 1, "upd_dt": datetime.now(UTC)})
    fields = body.model_dump()
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL(
                "INSERT INTO thresholds (threshold_type, level, min_value, max_value, factory,"
                " building, floor, loc_id, hold_seconds, clear_seconds, clear_margin)"
                " VALUES (%(threshold_type)s, %(level)s, %(min_value)s, %(max_value)s,"
                " %(factory)s, %(building)s, %(floor)s, %(loc_id)s, %(hold_seconds)s,"
                " %(clear_seconds)s, %(clear_margin)s) RETURNING {}"
            ).format(COLS),
            fields,
        )
        row = await cur.fetchone()
    await conn.commit()
    assert row is not None
    created = Threshold.model_validate(row)
    await _publish(settings, ThresholdRecord(threshold=created))
    return created


@router.put("/{threshold_id}", dependencies=[CanOperate])
async def update_threshold(
    conn: Conn, settings: AppSettings, threshold_id: ThresholdId, body: ThresholdPatch
) -> Threshold:
    current = await _get(conn, threshold_id)
    changes = body.model_dump(exclude_unset=True)
    merged = _validated({**current.model_dump(), **changes, "upd_dt": datetime.now(UTC)})
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL(
                "UPDATE thresholds SET threshold_type = %(threshold_type)s, level = %(level)s,"
                " min_value = %(min_value)s, max_value = %(max_value)s, factory = %(factory)s,"
                " building = %(building)s, floor = %(floor)s, loc_id = %(loc_id)s,"
                " hold_seconds = %(hold_seconds)s, clear_seconds = %(clear_seconds)s,"
                " clear_margin = %(clear_margin)s, upd_dt = now()"
                " WHERE threshold_id = %(threshold_id)s RETURNING {}"
            ).format(COLS),
            merged.model_dump(),
        )
        row = await cur.fetchone()
    await conn.commit()
    if row is None:
        raise HTTPException(404, f"threshold {threshold_id} does not exist")
    updated = Threshold.model_validate(row)
    await _publish(settings, ThresholdRecord(threshold=updated))
    return updated


@router.delete("/{threshold_id}", dependencies=[CanOperate])
async def delete_threshold(
    conn: Conn, settings: AppSettings, threshold_id: ThresholdId
) -> Threshold:
    current = await _get(conn, threshold_id)
    await conn.execute("DELETE FROM thresholds WHERE threshold_id = %s", (threshold_id,))
    await conn.commit()
    await _publish(settings, deleted_record(threshold_id))
    return current
