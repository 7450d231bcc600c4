"""Alerts (`/api/v1/alerts`): the original system's list/today/one contract, plus
acknowledgement, manual resolution and statistics.

The rows are written by the alerts sink from the alert events of the stream workers.  People
change only the ``acknowledged_*`` columns and, by resolving, ``state``/``resolved_*`` and
``resolve_note``; ``updated_at`` stays the decision time of the last event, which the sink
orders by.  A manually resolved alert stays resolved whatever events arrive later.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Query
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Caller, Conn, Operator, Reader
from schemas.common import Metric
from schemas.master import LOC_ID_PATTERN, SENSOR_ID_PATTERN

router = APIRouter(prefix="/alerts", tags=["alerts"])

AlertLevel = Literal["warning", "critical"]
AlertState = Literal["active", "resolved"]

_SELECT = sql.SQL(
    "SELECT a.alert_id, a.kind, a.alert_time, a.loc_id, a.sensor_id, a.alert_type,"
    " a.alert_level, a.state, a.threshold_id, a.threshold_type, a.threshold_level,"
    " a.measured_value, a.threshold_min, a.threshold_max, a.message, a.reading_time,"
    " a.updated_at, a.resolved_at, a.resolved_by, a.resolve_note, a.acknowledged_at,"
    " a.acknowledged_by, a.ack_note, l.factory, l.building, l.floor, l.area"
    " FROM alerts a LEFT JOIN locations l ON l.loc_id = a.loc_id"
)


class Alert(BaseModel):
    """The original alert fields, then state, people's actions and the location."""

    alert_id: UUID
    alert_time: datetime
    loc_id: str
    sensor_id: str
    alert_type: str | None
    alert_level: str
    threshold_id: int | None
    threshold_type: str | None
    threshold_level: str | None
    measured_value: Decimal | None
    threshold_min: Decimal | None
    threshold_max: Decimal | None
    message: str
    kind: str
    state: str
    reading_time: datetime | None
    updated_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None
    resolve_note: str | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    ack_note: str | None
    factory: str | None
    building: str | None
    floor: int | None
    area: str | None


class AlertEventOut(BaseModel):
    event_id: UUID
    transition: str
    level: str
    measured_value: Decimal | None
    reading_time: datetime | None
    decided_at: datetime
    message: str | None


class AlertDetail(Alert):
    events: list[AlertEventOut]


class Action(BaseModel):
    """Why; and, for an admin acting on behalf of someone, who (recorded as "<who> (by
    <admin>)").  The one acting is always the token's subject."""

    model_config = ConfigDict(extra="forbid")

    who: str | None = Field(None, min_length=1, max_length=100)
    note: str | None = Field(None, max_length=2000)


class Count(BaseModel):
    key: str
    count: int


AlertT = TypeVar("AlertT", bound=Alert)
# Who acted on an alert, and their notes: personal data, not shown without a token.
ANONYMOUS_FIELDS_HIDDEN = ("acknowledged_by", "ack_note", "resolved_by", "resolve_note")


class AlertStats(BaseModel):
    total: int
    active: int
    acknowledged: int
    by_level: list[Count]
    by_location: list[Count]
    by_day: list[Count]  # the location's local day of alert_time, chronological
    mean_time_to_acknowledge_s: float | None
    mean_time_to_resolve_s: float | None


Text = Annotated[str | None, Query(max_length=100)]


async def _filters(
    sensor_id: Annotated[str | None, Query(pattern=SENSOR_ID_PATTERN)] = None,
    loc_id: Annotated[str | None, Query(pattern=LOC_ID_PATTERN)] = None,
    factory: Text = None,
    building: Text = None,
    alert_type: Annotated[
        Metric | None, Query(description="the metric (also accepted as `metric`)")
    ] = None,
    metric: Metric | None = None,
    alert_level: Annotated[AlertLevel | None, Query(description="also accepted as `level`")] = None,
    level: AlertLevel | None = None,
    kind: Literal["threshold", "sensor_silent"] | None = None,
    state: AlertState | None = None,
    acknowledged: bool | None = None,
    from_: Annotated[
        datetime | None, Query(alias="from", description="alert_time at or after (ISO 8601)")
    ] = None,
    to: Annotated[datetime | None, Query(description="alert_time before (ISO 8601)")] = None,
) -> tuple[sql.Composable, list[Any]]:
    """The WHERE clause and parameters of the shared alert filters."""
    for a, b, name in ((alert_type, metric, "alert_type/metric"), (alert_level, level, "level")):
        if a is not None and b is not None and a != b:
            raise HTTPException(422, f"{name}: the two spellings disagree ({a} vs {b})")
    for stamp, name in ((from_, "from"), (to, "to")):
        if stamp is not None and stamp.tzinfo is None:
            raise HTTPException(422, f"{name}: give a time zone (e.g. 2024-09-22T00:00:00+09:00)")
    if from_ is not None and to is not None and from_ >= to:
        raise HTTPException(422, "from must be before to")
    conditions: list[sql.Composable] = [sql.SQL("true")]
    params: list[Any] = []
    for column, value in (
        ("a.sensor_id", sensor_id),
        ("a.loc_id", loc_id),
        ("l.factory", factory),
        ("l.building", building),
        ("a.alert_type", alert_type or metric),
        ("a.alert_level", alert_level or level),
        ("a.kind", kind),
        ("a.state", state),
    ):
        if value is not None:
            table, col = column.split(".")
            conditions.append(sql.SQL("{} = %s").format(sql.Identifier(table, col)))
            params.append(value)
    if acknowledged is not None:
        conditions.append(
            sql.SQL(
                "a.acknowledged_at IS NOT NULL" if acknowledged else "a.acknowledged_at IS NULL"
            )
        )
    if from_ is not None:
        conditions.append(sql.SQL("a.alert_time >= %s"))
        params.append(from_)
    if to is not None:
        conditions.append(sql.SQL("a.alert_time < %s"))
        params.append(to)
    return sql.SQL(" AND ").join(conditions), params


Filters = Annotated[tuple[sql.Composable, list[Any]], Depends(_filters)]
Skip = Annotated[int, Query(ge=0, le=1_000_000)]
Limit = Annotated[int, Query(ge=1, le=1000)]


async def _alerts(
    conn: Conn, where: sql.Composable, params: list[Any], skip: int, limit: int
) -> list[Alert]:
    query = sql.SQL("{} WHERE {} ORDER BY a.alert_time DESC, a.alert_id OFFSET %s LIMIT %s").format(
        _SELECT, where
    )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, [*params, skip, limit])
        return [Alert.model_validate(r) for r in await cur.fetchall()]


def _for(caller: Caller, alert: AlertT) -> AlertT:
    """What ``caller`` may see of an alert: without a token (open reads), not who
    acknowledged or resolved it nor their notes (personal data)."""
    if caller.role is not None:
        return alert
    return alert.model_copy(update=dict.fromkeys(ANONYMOUS_FIELDS_HIDDEN))


@router.get("/")
async def list_alerts(
    caller: Reader, conn: Conn, filters: Filters, skip: Skip = 0, limit: Limit = 100
) -> list[Alert]:
    """Alerts matching every given filter, newest first."""
    where, params = filters
    return [_for(caller, a) for a in await _alerts(conn, where, params, skip, limit)]


@router.get("/today")
async def today(
    caller: Reader, conn: Conn, filters: Filters, skip: Skip = 0, limit: Limit = 1000
) -> list[Alert]:
    """Alerts raised today, where "today" is the local day of each alert's factory (its
    location's time zone), newest first."""
    where, params = filters
    local_today = sql.SQL(
        "(a.alert_time AT TIME ZONE coalesce(l.timezone, 'Asia/Seoul'))::date"
        " = (now() AT TIME ZONE coalesce(l.timezone, 'Asia/Seoul'))::date"
    )
    found = await _alerts(
        conn, sql.SQL("{} AND {}").format(where, local_today), params, skip, limit
    )
    return [_for(caller, a) for a in found]


@router.get("/stats")
async def stats(
    caller: Reader, conn: Conn, filters: Filters, top: Annotated[int, Query(ge=1, le=1000)] = 50
) -> AlertStats:
    """Counts by level, location (the ``top`` busiest) and local day; mean times from raise to
    acknowledgement and to resolution (over the alerts that have them)."""
    where, params = filters
    base = sql.SQL("FROM alerts a LEFT JOIN locations l ON l.loc_id = a.loc_id WHERE {}").format(
        where
    )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL(
                "SELECT count(*) AS total, count(*) FILTER (WHERE a.state = 'active') AS active,"
                " count(a.acknowledged_at) AS acknowledged,"
                " avg(extract(epoch FROM a.acknowledged_at - a.alert_time)) AS mtta,"
                " avg(extract(epoch FROM a.resolved_at - a.alert_time)) AS mttr {}"
            ).format(base),
            params,
        )
        totals = await cur.fetchone()
        assert totals is not None
        grouped: dict[str, list[Count]] = {}
        for name, key, order in (
            ("level", sql.SQL("a.alert_level"), sql.SQL("count(*) DESC, 1")),
            ("location", sql.SQL("a.loc_id"), sql.SQL("count(*) DESC, 1 LIMIT %s")),
            (
                "day",
                sql.SQL(
                    "to_char(a.alert_time AT TIME ZONE coalesce(l.timezone, 'Asia/Seoul'),"
                    " 'YYYY-MM-DD')"
                ),
                sql.SQL("1"),
            ),
        ):
            args = [*params, top] if name == "location" else params
            await cur.execute(
                sql.SQL("SELECT {} AS key, count(*) AS count {} GROUP BY 1 ORDER BY {}").format(
                    key, base, order
                ),
                args,
            )
            grouped[name] = [Count.model_validate(r) for r in await cur.fetchall()]

    def seconds(value: Decimal | None) -> float | None:
        return None if value is None else round(float(value), 3)

    return AlertStats(
        total=totals["total"],
        active=totals["active"],
        acknowledged=totals["acknowledged"],
        by_level=grouped["level"],
        by_location=grouped["location"],
        by_day=grouped["day"],
        mean_time_to_acknowledge_s=seconds(totals["mtta"]),
        mean_time_to_resolve_s=seconds(totals["mttr"]),
    )


async def _one(conn: Conn, alert_id: UUID) -> Alert:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql.SQL("{} WHERE a.alert_id = %s").format(_SELECT), (alert_id,))
        row = await cur.fetchone()
    if row is None:
        raise HTTPException(404, f"alert {alert_id} does not exist")
    return Alert.model_validate(row)


@router.get("/{alert_id}")
async def one(caller: Reader, conn: Conn, alert_id: UUID) -> AlertDetail:
    """The alert with its events (raised, escalated, de-escalated, resolved) in order."""
    alert = await _one(conn, alert_id)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT event_id, transition, level, measured_value, reading_time, decided_at,"
            " payload->>'message' AS message FROM alert_events WHERE alert_id = %s"
            " ORDER BY decided_at, CASE transition WHEN 'raised' THEN 0"
            " WHEN 'resolved' THEN 2 ELSE 1 END, event_id",
            (alert_id,),
        )
        events = [AlertEventOut.model_validate(r) for r in await cur.fetchall()]
    return _for(caller, AlertDetail(**alert.model_dump(), events=events))


def acting(caller: Caller, body: Action) -> str:
    """Who is recorded as acting: the token's subject.  Only an admin may act on behalf of
    someone else (``who``), recorded as such; an operator naming anyone else is refused."""
    if body.who is None or body.who == caller.name:
        return caller.name
    if caller.role != "admin":
        raise HTTPException(403, "only an admin may act on behalf of someone else; leave out 'who'")
    return f"{body.who} (by {caller.name})"


@router.post("/{alert_id}/ack")
async def acknowledge(caller: Operator, conn: Conn, alert_id: UUID, body: Action) -> Alert:
    """Acknowledge (once: a second acknowledgement is a 409 naming the first)."""
    who = acting(caller, body)
    alert = await _one(conn, alert_id)
    if alert.acknowledged_at is not None:
        raise HTTPException(
            409,
            f"alert {alert_id} was acknowledged by {alert.acknowledged_by}"
            f" at {alert.acknowledged_at.isoformat()}",
        )
    await conn.execute(
        "UPDATE alerts SET acknowledged_at = now(), acknowledged_by = %s, ack_note = %s"
        " WHERE alert_id = %s AND acknowledged_at IS NULL",
        (who, body.note, alert_id),
    )
    await conn.commit()
    return await _one(conn, alert_id)


@router.post("/{alert_id}/resolve")
async def resolve(caller: Operator, conn: Conn, alert_id: UUID, body: Action) -> Alert:
    """Close an active alert by hand; it stays resolved whatever the workers report later
    (a condition that persists raises a new alert once it has cleared and returned)."""
    who = acting(caller, body)
    alert = await _one(conn, alert_id)
    if alert.state == "resolved":
        raise HTTPException(
            409,
            f"alert {alert_id} is already resolved"
            + (f" by {alert.resolved_by}" if alert.resolved_by else ""),
        )
    await conn.execute(
        "UPDATE alerts SET state = 'resolved', resolved_at = now(), resolved_by = %s,"
        " resolve_note = %s WHERE alert_id = %s AND state = 'active'",
        (who, body.note, alert_id),
    )
    await conn.commit()
    return await _one(conn, alert_id)
