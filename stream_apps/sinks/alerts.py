"""Alert events into ``alert_events`` and the alert rows they describe into ``alerts``.

Every event is stored once (``ON CONFLICT (event_id) DO NOTHING``).  The ``alerts`` row of
every alert touched by a batch is then recomputed from *all* its stored events with
:func:`alert_row`, so the row is the same whatever order the events arrived in and however
often they were delivered: an escalation read before its raise (possible across partitions
of a replay) still ends in the right row once both are in.

The upsert keeps what people changed: the ``acknowledged_*`` columns and ``resolve_note``
are never written here, and a resolved alert is never re-activated (its resolution is kept
as stored; only a resolution by supersession, below, gives way to the alert's own).  A row
is only replaced by one whose ``updated_at`` (the decision time of the last event applied)
is at least the stored one.  The API must therefore leave ``updated_at`` alone when it
acknowledges an alert.

There is one active alert per sensor, kind and metric.  When the table holds more (the
stream's state was lost beside a kept database: a changelog deleted, a Kafka cluster
rebuilt), the stream no longer knows the older ones and nothing would ever resolve them.
So whenever a batch leaves an alert active, all but the newest active alert of its sensor,
kind and metric (by the time of the reading that raised it) are resolved,
``resolved_by = 'superseded'``, with a note naming the newest.  Should a superseded alert's
own resolution arrive later (a replay out of order), it replaces the supersession and its
note.  Neither the alerts topic nor the notifier hear of a supersession.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, fields, replace
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from schemas.alerts import AlertEvent, AlertKind, AlertTransition
from schemas.common import Status

log = logging.getLogger(__name__)

ACTIVE = "active"
RESOLVED = "resolved"
RESOLVED_BY_SYSTEM = "system"
SUPERSEDED = "superseded"

# Tie-break of events decided at the same instant: an alert is raised before it changes
# level, and changes level before it is resolved.
_TRANSITION_ORDER = {
    AlertTransition.RAISED: 0,
    AlertTransition.ESCALATED: 1,
    AlertTransition.DEESCALATED: 1,
    AlertTransition.RESOLVED: 2,
}


@dataclass(frozen=True)
class AlertRow:
    """The columns of ``alerts`` that events decide (field order = column order)."""

    alert_id: UUID
    kind: str
    sensor_id: str
    loc_id: str
    alert_type: str | None
    alert_level: str
    state: str
    threshold_id: int | None
    threshold_type: str | None
    threshold_level: str | None
    threshold_min: Decimal | None
    threshold_max: Decimal | None
    measured_value: Decimal | None
    message: str
    alert_time: datetime
    reading_time: datetime | None
    updated_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None


def event_order(event: AlertEvent) -> tuple[datetime, int, str]:
    """Decision time, then transition (raised < escalated/deescalated < resolved), then id
    (only so that the order is total and the result deterministic)."""
    return (event.decided_at, _TRANSITION_ORDER[event.transition], str(event.event_id))


def _opened(event: AlertEvent) -> AlertRow:
    return AlertRow(
        alert_id=event.alert_id,
        kind=event.kind.value,
        sensor_id=event.sensor_id,
        loc_id=event.loc_id,
        alert_type=event.metric,
        alert_level=event.level.value,
        state=ACTIVE,
        threshold_id=event.threshold_id,
        threshold_type=event.metric if event.kind is AlertKind.THRESHOLD else None,
        threshold_level=event.threshold_level,
        threshold_min=event.threshold_min,
        threshold_max=event.threshold_max,
        measured_value=event.measured_value,
        message=event.message,
        alert_time=event.decided_at,
        reading_time=event.reading_time,
        updated_at=event.decided_at,
        resolved_at=None,
        resolved_by=None,
    )


def _applied(row: AlertRow, event: AlertEvent) -> AlertRow:
    if event.transition is AlertTransition.RESOLVED:
        return replace(
            row,
            state=RESOLVED,
            resolved_at=event.decided_at,
            resolved_by=RESOLVED_BY_SYSTEM,
            updated_at=event.decided_at,
        )
    return replace(
        row,
        alert_level=event.level.value,
        threshold_id=event.threshold_id,
        threshold_level=event.threshold_level,
        threshold_min=event.threshold_min,
        threshold_max=event.threshold_max,
        measured_value=event.measured_value,
        message=event.message,
        updated_at=event.decided_at,
    )


def alert_row(events: Iterable[AlertEvent]) -> AlertRow | None:
    """The ``alerts`` row that the events of one alert describe, in any arrival order.

    Events are applied in :func:`event_order`.  The first one opens the row (normally the
    raise: ``alert_time`` is its decision time); escalations and de-escalations update the
    level, threshold, measured value and message; the resolution closes it, and nothing after
    it changes the row.  None when there are no events.
    """
    row: AlertRow | None = None
    for event in sorted(events, key=event_order):
        if row is None:
            row = _opened(event)
            if event.transition is AlertTransition.RESOLVED:
                row = _applied(row, event)
        elif row.state == RESOLVED:
            break
        elif event.transition is not AlertTransition.RAISED:
            row = _applied(row, event)
    return row


_ROW_COLUMNS = tuple(f.name for f in fields(AlertRow))
# Kept as stored once an alert is resolved (by the system or by a person).
_RESOLUTION = ("state", "resolved_at", "resolved_by")
_DERIVED = tuple(c for c in _ROW_COLUMNS if c != "alert_id")


def _assignment(column: str) -> sql.Composed:
    if column in _RESOLUTION:
        return sql.SQL(
            "{col} = CASE WHEN alerts.state = 'resolved' AND NOT"
            " (alerts.resolved_by = {superseded} AND excluded.state = 'resolved')"
            " THEN {stored} ELSE {incoming} END"
        ).format(
            col=sql.Identifier(column),
            superseded=sql.Literal(SUPERSEDED),
            stored=sql.Identifier("alerts", column),
            incoming=sql.Identifier("excluded", column),
        )
    return sql.SQL("{col} = {incoming}").format(
        col=sql.Identifier(column), incoming=sql.Identifier("excluded", column)
    )


# The supersession's note goes with it when the alert's own resolution replaces it.
_NOTE = sql.SQL(
    "resolve_note = CASE WHEN alerts.resolved_by = {superseded} AND excluded.state = 'resolved'"
    " THEN NULL ELSE alerts.resolve_note END"
).format(superseded=sql.Literal(SUPERSEDED))

_UPSERT_ALERT = sql.SQL(
    "INSERT INTO alerts ({columns}) VALUES ({placeholders})"
    " ON CONFLICT (alert_id) DO UPDATE SET {assignments}, {note}"
    " WHERE EXCLUDED.updated_at >= alerts.updated_at"
    " AND ({incoming}) IS DISTINCT FROM ({stored})"
).format(
    columns=sql.SQL(", ").join(sql.Identifier(c) for c in _ROW_COLUMNS),
    placeholders=sql.SQL(", ").join(sql.Placeholder() for _ in _ROW_COLUMNS),
    assignments=sql.SQL(", ").join(_assignment(c) for c in _DERIVED),
    note=_NOTE,
    incoming=sql.SQL(", ").join(sql.Identifier("excluded", c) for c in _DERIVED),
    stored=sql.SQL(", ").join(sql.Identifier("alerts", c) for c in _DERIVED),
)


# Of the active alerts of one sensor, kind and metric, all but the newest are resolved as
# superseded by it (see the module's docstring).  "Newest" is by the time of the reading
# that raised it (data time, so that a replay decided later does not make old data look
# new), else by decision time.
_SUPERSEDE = sql.SQL(
    "UPDATE alerts a SET state = 'resolved', resolved_by = {superseded},"
    " resolved_at = greatest(n.alert_time, a.alert_time),"
    " resolve_note = coalesce(a.resolve_note, 'superseded by alert ' || n.alert_id"
    " || ', raised for the same sensor and metric while this one was still active')"
    " FROM (SELECT alert_id, alert_time FROM alerts WHERE state = 'active'"
    " AND sensor_id = %(sensor)s AND kind = %(kind)s"
    " AND alert_type IS NOT DISTINCT FROM %(metric)s"
    " ORDER BY coalesce(reading_time, alert_time) DESC, alert_id DESC LIMIT 1) n"
    " WHERE a.state = 'active' AND a.sensor_id = %(sensor)s AND a.kind = %(kind)s"
    " AND a.alert_type IS NOT DISTINCT FROM %(metric)s AND a.alert_id <> n.alert_id"
).format(superseded=sql.Literal(SUPERSEDED))


def _valid(events: Iterable[AlertEvent]) -> dict[UUID, AlertEvent]:
    """The events by id; ValueError for an event without an alert level (bad data: the
    database would refuse it, and the sink's boundary dead-letters it)."""
    valid: dict[UUID, AlertEvent] = {}
    for event in events:
        if event.level is Status.NORMAL:
            raise ValueError(
                f"event {event.event_id} of alert {event.alert_id}: level"
                f" {event.level.value!r} is not an alert level"
            )
        valid[event.event_id] = event
    return valid


class AlertsWriter:
    name = "alerts"
    model = AlertEvent

    def write(self, conn: psycopg.Connection[Any], records: Sequence[AlertEvent]) -> int:
        """Store new events and recompute the rows of the alerts they belong to (caller owns
        the transaction); returns events inserted plus alert rows inserted or changed."""
        events = _valid(records)
        if not events:
            return 0
        alert_ids = sorted({e.alert_id for e in events.values()})
        with conn.cursor() as cur:
            # Two sinks writing the same alert at once (a rebalance, a replay group running
            # beside the live one) would each recompute from events the other has not
            # committed yet; serialise them per alert, in one order so they cannot deadlock.
            cur.executemany(
                "SELECT pg_advisory_xact_lock(hashtextextended('iotmon.alert.' || %s, 0))",
                [(str(a),) for a in alert_ids],
            )
            # Superseding writes rows of other alerts of the same sensor, kind and metric:
            # every writer of such a row takes that key's lock first (after the alerts',
            # each list sorted), so two sinks cannot lock those rows in opposite orders.
            keys = sorted({f"{e.sensor_id}|{e.kind.value}|{e.metric}" for e in events.values()})
            cur.executemany(
                "SELECT pg_advisory_xact_lock(hashtextextended('iotmon.alert-key.' || %s, 0))",
                [(k,) for k in keys],
            )
            cur.executemany(
                "INSERT INTO alert_events (event_id, alert_id, transition, level,"
                " measured_value, reading_time, decided_at, payload)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb)"
                " ON CONFLICT (event_id) DO NOTHING",
                [
                    (
                        e.event_id,
                        e.alert_id,
                        e.transition.value,
                        e.level.value,
                        e.measured_value,
                        e.reading_time,
                        e.decided_at,
                        e.model_dump_json(),
                    )
                    for e in events.values()
                ],
            )
            changed = max(cur.rowcount, 0)
            stored: dict[UUID, list[AlertEvent]] = {a: [] for a in alert_ids}
            cur.execute("SELECT payload FROM alert_events WHERE alert_id = ANY(%s)", (alert_ids,))
            for (payload,) in cur.fetchall():
                event = AlertEvent.model_validate(payload)
                stored[event.alert_id].append(event)
            rows = [row for evs in stored.values() if (row := alert_row(evs)) is not None]
            cur.executemany(_UPSERT_ALERT, [astuple(row) for row in rows])
            changed += max(cur.rowcount, 0)
            superseded = 0
            for sensor, kind, metric in sorted(
                {(r.sensor_id, r.kind, r.alert_type or "") for r in rows if r.state == ACTIVE}
            ):
                cur.execute(_SUPERSEDE, {"sensor": sensor, "kind": kind, "metric": metric or None})
                superseded += max(cur.rowcount, 0)
            if superseded:
                log.warning(
                    "%d older active alert(s) resolved as superseded by a newer alert of the"
                    " same sensor and metric (the stream's state had lost them)",
                    superseded,
                )
            return changed + superseded
