"""Alert events: every state change of an alert is one event on the alerts topic."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel

from schemas.common import Status


class AlertKind(StrEnum):
    THRESHOLD = "threshold"
    SENSOR_SILENT = "sensor_silent"


class AlertTransition(StrEnum):
    RAISED = "raised"
    ESCALATED = "escalated"
    DEESCALATED = "deescalated"
    RESOLVED = "resolved"


class AlertEvent(BaseModel):
    """One state change of an alert.  ``event_id`` and ``alert_id`` are derived from the
    input (sensor, metric, reading times), so re-processing after a crash yields the same
    ids and the sinks store each event once."""

    event_id: UUID
    alert_id: UUID
    kind: AlertKind
    transition: AlertTransition
    sensor_id: str
    loc_id: str
    metric: str | None  # None for sensor_silent
    level: Status  # warning or critical; for "resolved", the level the alert had
    measured_value: Decimal | None
    threshold_id: int | None
    threshold_level: str | None
    threshold_min: Decimal | None
    threshold_max: Decimal | None
    reading_time: datetime | None
    decided_at: datetime
    message: str
