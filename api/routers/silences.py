"""Silences and maintenance windows (`/api/v1/silences`).

A silence mutes, for a time range, the alert notifications of a scope (plant, factory,
building, floor, area, sensor_id; NULL = any) and optionally of one metric.  The notifier
still writes a row for every muted (event, subscription) pair, with status ``SUPPRESSED``
and the silence's id, so nothing muted is lost; ``GET /silences/{id}/suppressed`` lists
them.  Alerts themselves are raised, stored and shown as always: a silence is about who is
told, not about what is true.

Creating and ending one needs the operator role; ending early moves ``ends_at`` to now and
keeps the row (who muted what, when and why stays on record).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.deps import CanReadPrivate, Conn, Operator, PrivateReader
from api.filters import equal
from api.routers.subscriptions import Limit, Name, Notification, Skip, note_for
from schemas.common import Metric
from schemas.master import SENSOR_ID_PATTERN

router = APIRouter(tags=["silences"])

MAX_SILENCE = timedelta(days=31)
_SCOPE = ("plant", "factory", "building", "floor", "area", "sensor_id", "threshold_type")
_COLUMNS = sql.SQL(", ").join(
    sql.Identifier(c)
    for c in (
        "silence_id",
        *_SCOPE,
        "starts_at",
        "ends_at",
        "reason",
        "created_by",
        "created_at",
        "ended_by",
    )
)
SilenceId = Annotated[int, Path(ge=1, le=2**62)]


class SilenceIn(BaseModel):
    """A scope (every field optional, NULL = any), a time range and why.  Give ``ends_at``
    or ``duration_s``; ``starts_at`` defaults to now."""

    model_config = ConfigDict(extra="forbid")

    plant: Name = None
    factory: Name = None
    building: Name = None
    floor: int | None = Field(None, ge=-100, le=500)
    area: Name = None
    sensor_id: str | None = Field(None, pattern=SENSOR_ID_PATTERN)
    threshold_type: Metric | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    duration_s: int | None = Field(None, ge=60, le=int(MAX_SILENCE.total_seconds()))
    reason: str = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _range(self) -> SilenceIn:
        for name in ("starts_at", "ends_at"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} needs a time zone (e.g. 2026-07-01T09:00:00+09:00)")
        if (self.ends_at is None) == (self.duration_s is None):
            raise ValueError("give either ends_at or duration_s")
        start = self.starts_at or datetime.now(UTC)
        try:
            end = self.ends_at or start + timedelta(seconds=self.duration_s or 0)
        except OverflowError:
            raise ValueError("starts_at + duration_s is past the year 9999") from None
        if end <= start:
            raise ValueError("ends_at must be after starts_at")
        if end - start > MAX_SILENCE:
            raise ValueError("a silence lasts at most 31 days; create another to go on")
        if end <= datetime.now(UTC):
            raise ValueError("ends_at is in the past: such a silence would mute nothing")
        self.starts_at, self.ends_at, self.duration_s = start, end, None
        return self


class Silence(BaseModel):
    silence_id: int
    plant: str | None
    factory: str | None
    building: str | None
    floor: int | None
    area: str | None
    sensor_id: str | None
    threshold_type: str | None
    starts_at: datetime
    ends_at: datetime
    reason: str
    created_by: str
    created_at: datetime
    ended_by: str | None
    active: bool = False


def _silence(row: dict[str, object], now: datetime) -> Silence:
    found = Silence.model_validate(row)
    found.active = found.starts_at <= now < found.ends_at
    return found


async def _get(conn: Conn, silence_id: int) -> Silence:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL("SELECT {}, now() AS now FROM silences WHERE silence_id = %s").format(_COLUMNS),
            (silence_id,),
        )
        row = await cur.fetchone()
    if row is None:
        raise HTTPException(404, f"silence {silence_id} does not exist")
    return _silence(row, row.pop("now"))


@router.get("/silences/", dependencies=[CanReadPrivate])
async def list_silences(
    conn: Conn,
    skip: Skip = 0,
    limit: Limit = 100,
    state: Annotated[
        str,
        Query(
            pattern="^(active|pending|ended|current|all)$",
            description="current (the default): active or pending",
        ),
    ] = "current",
    factory: Annotated[str | None, Query(max_length=100)] = None,
) -> list[Silence]:
    """Silences, newest first; by default those not yet over (active or starting later)."""
    conditions, params = equal({"factory": factory})
    when = {
        "active": "starts_at <= now() AND ends_at > now()",
        "pending": "starts_at > now()",
        "ended": "ends_at <= now()",
        "current": "ends_at > now()",
        "all": "true",
    }[state]
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL(
                "SELECT {}, now() AS now FROM silences WHERE {} AND {}"
                " ORDER BY starts_at DESC, silence_id DESC OFFSET %s LIMIT %s"
            ).format(_COLUMNS, sql.SQL(" AND ").join(conditions), sql.SQL(when)),
            [*params, skip, limit],
        )
        rows = await cur.fetchall()
    return [_silence(r, r.pop("now")) for r in rows]


@router.get("/silences/{silence_id}", dependencies=[CanReadPrivate])
async def get_silence(conn: Conn, silence_id: SilenceId) -> Silence:
    return await _get(conn, silence_id)


@router.post("/silences/", status_code=201)
async def create_silence(caller: Operator, conn: Conn, body: SilenceIn) -> Silence:
    """Mute a scope for a time range (operator).  Who created it is recorded."""
    fields = {**body.model_dump(include={*_SCOPE, "starts_at", "ends_at", "reason"})}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL(
                "INSERT INTO silences ({}, created_by) VALUES ({}, %(created_by)s)"
                " RETURNING {}, now() AS now"
            ).format(
                sql.SQL(", ").join(sql.Identifier(f) for f in fields),
                sql.SQL(", ").join(sql.Placeholder(f) for f in fields),
                _COLUMNS,
            ),
            {**fields, "created_by": caller.name},
        )
        row = await cur.fetchone()
    await conn.commit()
    assert row is not None
    return _silence(row, row.pop("now"))


@router.delete("/silences/{silence_id}")
async def end_silence(caller: Operator, conn: Conn, silence_id: SilenceId) -> Silence:
    """End a silence now (operator); a pending one never starts.  The row is kept."""
    current = await _get(conn, silence_id)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL(
                "UPDATE silences SET ends_at = now(),"
                " starts_at = least(starts_at, now() - interval '1 microsecond'),"
                " ended_by = %s WHERE silence_id = %s AND ends_at > now()"
                " RETURNING {}, now() AS now"
            ).format(_COLUMNS),
            (caller.name, silence_id),
        )
        row = await cur.fetchone()
    await conn.commit()
    if row is None:
        raise HTTPException(409, f"silence {silence_id} ended at {current.ends_at.isoformat()}")
    return _silence(row, row.pop("now"))


@router.get("/silences/{silence_id}/suppressed")
async def suppressed_by(
    caller: PrivateReader, conn: Conn, silence_id: SilenceId, skip: Skip = 0, limit: Limit = 100
) -> list[Notification]:
    """The notifications this silence kept from being sent, newest first."""
    await _get(conn, silence_id)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT notification_id, alert_id, event_id, subscription_id, notify_type,"
            " notify_id, status, try_count, created_at, sent_time, fail_reason,"
            " idempotency_key, purpose, silence_id FROM notifications"
            " WHERE silence_id = %s ORDER BY created_at DESC, notification_id DESC"
            " OFFSET %s LIMIT %s",
            (silence_id, skip, limit),
        )
        return [note_for(caller, r) for r in await cur.fetchall()]
