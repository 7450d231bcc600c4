"""Alert lifecycle per sensor and metric: one active alert at a time, stable ids.

Driven by event time (the readings' capture times), so replaying the same readings gives
the same decisions and the same ids.  A status must hold for the matched band's
``hold_seconds`` before an alert is raised or escalated; the value must stay below the
active level for the active band's ``clear_seconds`` before it is de-escalated or resolved,
and within ``clear_margin`` of the active band it still counts as the active level
(hysteresis), so a value hovering at a band edge does not flap.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

from schemas.alerts import AlertEvent, AlertKind, AlertTransition
from schemas.common import Status
from schemas.thresholds import Threshold
from stream_apps.processing.rules import STATUS_RANK, Evaluation

_QUIET = (None, Status.NORMAL)
NAMESPACE = uuid.UUID("6f1c3c52-8f0e-4b8e-9a39-1d6a2f8e7c11")


def alert_id_for(sensor_id: str, metric: str, raised_at_reading: datetime) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"alert|{sensor_id}|{metric}|{raised_at_reading.isoformat()}")


def event_id_for(alert_id: uuid.UUID, transition: str, reading_time: datetime) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"event|{alert_id}|{transition}|{reading_time.isoformat()}")


@dataclass
class MetricAlertState:  # a dataclass for cheap updates, like the windows
    alert_id: uuid.UUID | None = None
    level: Status | None = None
    band: Threshold | None = None
    pending_level: Status | None = None  # a higher level waiting for its hold time
    pending_since: datetime | None = None
    lower_since: datetime | None = None  # below the active level since


class Subject(NamedTuple):  # one per reading and metric: a tuple is the cheapest to make
    sensor_id: str
    loc_id: str
    metric: str


def _held(since: datetime | None, now: datetime, seconds: int) -> bool:
    return since is not None and now - since >= timedelta(seconds=seconds)


def _within_margin(band: Threshold, value: Decimal) -> bool:
    margin = band.clear_margin
    return (band.min_value is None or band.min_value - margin <= value) and (
        band.max_value is None or value <= band.max_value + margin
    )


def _message(
    subject: Subject,
    transition: AlertTransition,
    level: Status,
    value: Decimal | None,
    band: Threshold | None,
) -> str:
    where = f"{subject.sensor_id} ({subject.loc_id})"
    if transition is AlertTransition.RESOLVED:
        return f"{subject.metric} at {where} is back to normal ({value})"
    bounds = ""
    if band is not None:
        low = "" if band.min_value is None else str(band.min_value)
        high = "" if band.max_value is None else str(band.max_value)
        bounds = f", band {band.level} [{low}, {high}]"
    return f"{subject.metric} {value} at {where}: {level.value}{bounds}"


class _Change(NamedTuple):
    """A transition of an alert, decided by one reading: the event it sends."""

    alert_id: uuid.UUID
    transition: AlertTransition
    level: Status
    band: Threshold | None  # the band the event reports


def step(
    state: MetricAlertState,
    subject: Subject,
    evaluation: Evaluation,
    value: Decimal | None,
    reading_time: datetime,
    decided_at: datetime,
) -> list[AlertEvent]:
    """Advance the state with one reading; returns the alert events it causes (0 or 1)."""
    alert_id = state.alert_id
    if alert_id is None and evaluation.status in _QUIET:
        # Nothing active and nothing to raise, by far the most common case: _drop_pending
        # inlined, as this runs for every reading and metric.
        if state.pending_level is not None or state.pending_since is not None:
            state.pending_level = state.pending_since = None
        return []
    level = state.level
    if alert_id is None or level is None:
        change = _toward_raise(state, subject, evaluation, reading_time)
    else:
        change = _while_active(state, alert_id, level, evaluation, value, reading_time)
    if change is None:
        return []
    return [_event(change, subject, value, reading_time, decided_at)]


def _toward_raise(
    state: MetricAlertState, subject: Subject, evaluation: Evaluation, reading_time: datetime
) -> _Change | None:
    """No alert is active: raise one once the status has been other than normal for the
    current band's ``hold_seconds``, counted from the first such reading (a change between
    the levels above normal does not restart it)."""
    effective = evaluation.status or Status.NORMAL
    if effective is Status.NORMAL:
        _drop_pending(state)
        return None
    if state.pending_since is None:
        state.pending_since = reading_time
    state.pending_level = effective
    band = evaluation.band
    if not _held(state.pending_since, reading_time, _hold(band)):
        return None
    alert_id = state.alert_id = alert_id_for(subject.sensor_id, subject.metric, reading_time)
    state.level, state.band = effective, band
    state.pending_level = state.pending_since = state.lower_since = None
    return _Change(alert_id, AlertTransition.RAISED, effective, band)


def _while_active(
    state: MetricAlertState,
    alert_id: uuid.UUID,
    level: Status,
    evaluation: Evaluation,
    value: Decimal | None,
    reading_time: datetime,
) -> _Change | None:
    """An alert at ``level`` is active: escalate it, keep it, or de-escalate or resolve it."""
    effective = evaluation.status or Status.NORMAL
    band = evaluation.band
    if (
        state.band is not None
        and value is not None
        and STATUS_RANK[effective] < STATUS_RANK[level]
        and _within_margin(state.band, value)
    ):
        effective, band = level, state.band  # hysteresis: still the active level
    if STATUS_RANK[effective] > STATUS_RANK[level]:
        return _toward_escalation(state, alert_id, effective, band, reading_time)
    _drop_pending(state)
    if effective is level:
        if state.lower_since is not None:
            state.lower_since = None
        return None
    return _toward_clear(state, alert_id, level, effective, band, reading_time)


def _toward_escalation(
    state: MetricAlertState,
    alert_id: uuid.UUID,
    effective: Status,
    band: Threshold | None,
    reading_time: datetime,
) -> _Change | None:
    """A higher level than the active one: escalate once it has held for its band's
    ``hold_seconds`` (a change of the higher level starts the hold again)."""
    state.lower_since = None
    if state.pending_level is not effective or state.pending_since is None:
        state.pending_level, state.pending_since = effective, reading_time
    if not _held(state.pending_since, reading_time, _hold(band)):
        return None
    state.level, state.band = effective, band
    state.pending_level = state.pending_since = None
    return _Change(alert_id, AlertTransition.ESCALATED, effective, band)


def _toward_clear(
    state: MetricAlertState,
    alert_id: uuid.UUID,
    level: Status,
    effective: Status,
    band: Threshold | None,
    reading_time: datetime,
) -> _Change | None:
    """A lower level than the active ``level``: once it has held for the active band's
    ``clear_seconds``, resolve the alert (normal) or de-escalate it."""
    if state.lower_since is None:
        state.lower_since = reading_time
    clear = state.band.clear_seconds if state.band is not None else 0
    if not _held(state.lower_since, reading_time, clear):
        return None
    state.lower_since = None
    if effective is Status.NORMAL:
        # The event reports the level and band that were active.
        resolved = _Change(alert_id, AlertTransition.RESOLVED, level, state.band)
        state.alert_id = state.level = state.band = None
        return resolved
    state.level, state.band = effective, band
    return _Change(alert_id, AlertTransition.DEESCALATED, effective, band)


def _drop_pending(state: MetricAlertState) -> None:
    if state.pending_level is not None or state.pending_since is not None:
        state.pending_level = state.pending_since = None


def _hold(band: Threshold | None) -> int:
    return band.hold_seconds if band is not None else 0


def _event(
    change: _Change,
    subject: Subject,
    value: Decimal | None,
    reading_time: datetime,
    decided_at: datetime,
) -> AlertEvent:
    used = change.band
    return AlertEvent(
        event_id=event_id_for(change.alert_id, change.transition.value, reading_time),
        alert_id=change.alert_id,
        kind=AlertKind.THRESHOLD,
        transition=change.transition,
        sensor_id=subject.sensor_id,
        loc_id=subject.loc_id,
        metric=subject.metric,
        level=change.level,
        measured_value=value,
        threshold_id=used.threshold_id if used else None,
        threshold_level=used.level if used else None,
        threshold_min=used.min_value if used else None,
        threshold_max=used.max_value if used else None,
        reading_time=reading_time,
        decided_at=decided_at,
        message=_message(subject, change.transition, change.level, value, used),
    )
