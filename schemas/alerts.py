"""Alert events: every state change of an alert is one event on the alerts topic."""

from __future__ import annotations

import re
from decimal import Decimal
from enum import StrEnum
from uuid import UUID

from pydantic import AwareDatetime, BaseModel

from schemas.common import Status
from schemas.master import Location


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
    # With a time zone: a naive time cannot be placed on the timeline (nor in a silence).
    reading_time: AwareDatetime | None
    decided_at: AwareDatetime
    message: str
    # Where the sensor is, as master data said when the event was sent, so that any
    # subscriber of the topic (ours or a plant's own) can filter without a lookup.  None
    # for a sensor without a location (or an event written before they were added).
    plant: str | None = None
    factory: str | None = None
    building: str | None = None
    floor: int | None = None
    area: str | None = None
    location_name: str | None = None


def with_location(event: AlertEvent, location: Location | None) -> AlertEvent:
    """``event`` carrying ``location``'s place fields (unchanged without one)."""
    if location is None:
        return event
    return event.model_copy(
        update={
            "plant": location.plant,
            "factory": location.factory,
            "building": location.building,
            "floor": location.floor,
            "area": location.area,
            "location_name": location.location_name,
        }
    )


# -- MQTT alert states: the topic a subscription publishes each location's state to ----------
# A template such as ``alerts/{factory}/{loc_id}``, filled in from the alert event.

TOPIC_FIELDS = ("plant", "factory", "building", "floor", "area", "loc_id", "sensor_id", "metric")
FIELD_PATTERN = re.compile(r"\{([^{}]*)\}")


class TopicTemplateError(ValueError):
    """A subscription's MQTT topic that cannot be filled in safely."""


def check_topic_template(template: str, root: str | None = None) -> str:
    """``template`` if it is an MQTT topic (under ``root/`` when given) whose ``{...}``
    fields are all known (``TOPIC_FIELDS``), with no wildcard and no empty level; else
    TopicTemplateError."""
    if root is not None and not template.startswith(f"{root}/"):
        raise TopicTemplateError(f"the topic must begin with {root}/ (the notifier's own tree)")
    for name in FIELD_PATTERN.findall(template):
        if name not in TOPIC_FIELDS:
            raise TopicTemplateError(
                f"unknown field {{{name}}} in the topic; known: "
                + ", ".join(f"{{{f}}}" for f in TOPIC_FIELDS)
            )
    bare = FIELD_PATTERN.sub("x", template)
    if any(c in bare for c in "+#{}\x00") or "" in bare.split("/"):
        raise TopicTemplateError("the topic may not hold '+', '#', stray braces or an empty level")
    if len(template.encode()) > 512:
        raise TopicTemplateError("the topic is longer than 512 bytes")
    return template
