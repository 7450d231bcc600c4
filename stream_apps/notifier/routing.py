"""Which subscriptions an alert event reaches: plain functions, tested table by table.

A subscription's scope fields (plant, factory, building, floor, area, sensor_id) must each
equal the event's location where they are set; NULL matches anything.  ``threshold_type``
NULL matches any metric.  The event's level must reach ``min_level`` (warning < critical;
a resolved event carries the level the alert had).  ``sensor_silent`` alerts reach only
subscriptions that opted in (``include_silent``), and only the transitions a subscription
lists notify it (default raised, escalated, resolved).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from schemas.alerts import AlertEvent, AlertKind
from schemas.common import Status

LEVEL_RANK = {Status.WARNING: 1, Status.CRITICAL: 2}
DEFAULT_TRANSITIONS = ("raised", "escalated", "resolved")
SCOPE = ("plant", "factory", "building", "floor", "area")


@dataclass(frozen=True)
class Subscription:
    subscription_id: int
    subscriber: str
    notify_type: str
    notify_id: str
    plant: str | None = None
    factory: str | None = None
    building: str | None = None
    floor: int | None = None
    area: str | None = None
    sensor_id: str | None = None
    threshold_type: str | None = None
    min_level: str = "warning"
    enabled: bool = True
    transitions: tuple[str, ...] = DEFAULT_TRANSITIONS
    include_silent: bool = False
    secret: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, row: dict[str, Any]) -> Subscription:
        """From a row of ``alert_subscriptions``."""
        known = {k: v for k, v in row.items() if k in cls.__dataclass_fields__}
        if known.get("transitions") is not None:
            known["transitions"] = tuple(known["transitions"])
        return cls(**known)


def matches(sub: Subscription, event: AlertEvent) -> bool:
    if not sub.enabled or event.transition.value not in sub.transitions:
        return False
    if event.kind is AlertKind.SENSOR_SILENT:
        if not sub.include_silent:
            return False
    elif sub.threshold_type is not None and sub.threshold_type != event.metric:
        return False
    if sub.sensor_id is not None and sub.sensor_id != event.sensor_id:
        return False
    for name in SCOPE:
        wanted = getattr(sub, name)
        if wanted is not None and wanted != getattr(event, name):
            return False
    return LEVEL_RANK.get(event.level, 0) >= LEVEL_RANK[Status(sub.min_level)]


def route(event: AlertEvent, subscriptions: Iterable[Subscription]) -> list[Subscription]:
    """The subscriptions ``event`` notifies, in subscription order."""
    return [s for s in subscriptions if matches(s, event)]
