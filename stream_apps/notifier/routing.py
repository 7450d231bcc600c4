"""Which subscriptions an alert event reaches: plain functions, tested table by table.

A subscription's scope fields (plant, factory, building, floor, area, sensor_id) must each
equal the event's location where they are set; NULL matches anything.  ``threshold_type``
NULL matches any metric.  The event's level must reach ``min_level`` (warning < critical;
a resolved event carries the level the alert had).  ``sensor_silent`` alerts reach only
subscriptions that opted in (``include_silent``), and only the transitions a subscription
lists notify it (default raised, escalated, resolved).

A silence (maintenance window) mutes the events of its scope and optional metric decided in
its time range: the notification is logged as suppressed instead of sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.alerts import AlertEvent, AlertKind
from schemas.common import Status

LEVEL_RANK = {Status.WARNING: 1, Status.CRITICAL: 2}
DEFAULT_TRANSITIONS = ("raised", "escalated", "resolved")
SCOPE = ("plant", "factory", "building", "floor", "area")


@dataclass(frozen=True, kw_only=True)
class Scope:
    """Where (and, for threshold alerts, which metric): every field set must equal the
    event's, None matches anything."""

    plant: str | None = None
    factory: str | None = None
    building: str | None = None
    floor: int | None = None
    area: str | None = None
    sensor_id: str | None = None
    threshold_type: str | None = None

    def covers(self, event: AlertEvent) -> bool:
        """The place only (the metric is the caller's: it treats silent sensors apart)."""
        if self.sensor_id is not None and self.sensor_id != event.sensor_id:
            return False
        return all(
            getattr(self, name) is None or getattr(self, name) == getattr(event, name)
            for name in SCOPE
        )


@dataclass(frozen=True, kw_only=True)
class Subscription(Scope):
    subscription_id: int
    subscriber: str
    notify_type: str
    notify_id: str
    min_level: str = "warning"
    enabled: bool = True
    transitions: tuple[str, ...] = DEFAULT_TRANSITIONS
    include_silent: bool = False
    secret: str | None = field(default=None, repr=False)
    escalate_after_s: int | None = None
    escalate_type: str | None = None
    escalate_to: str | None = None
    max_per_minute: int | None = None

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
    if not sub.covers(event):
        return False
    return LEVEL_RANK.get(event.level, 0) >= LEVEL_RANK[Status(sub.min_level)]


def route(event: AlertEvent, subscriptions: Iterable[Subscription]) -> list[Subscription]:
    """The subscriptions ``event`` notifies, in subscription order."""
    return [s for s in subscriptions if matches(s, event)]


@dataclass(frozen=True, kw_only=True)
class Silence(Scope):
    silence_id: int
    starts_at: datetime
    ends_at: datetime
    reason: str
    created_by: str = ""

    @classmethod
    def of(cls, row: dict[str, Any]) -> Silence:
        """From a row of ``silences``."""
        return cls(**{k: v for k, v in row.items() if k in cls.__dataclass_fields__})

    def mutes(self, event: AlertEvent, at: datetime | None = None) -> bool:
        """Whether this silence mutes ``event`` at ``at`` (default: when it was decided).
        A metric-bound silence does not mute sensor_silent alerts, which have none."""
        when = at or event.decided_at
        if not self.starts_at <= when < self.ends_at:
            return False
        if self.threshold_type is not None and self.threshold_type != event.metric:
            return False
        return self.covers(event)


def silenced_by(
    event: AlertEvent, silences: Iterable[Silence], at: datetime | None = None
) -> Silence | None:
    """The first silence (by id) that mutes ``event``, or None."""
    return next(
        (s for s in sorted(silences, key=lambda s: s.silence_id) if s.mutes(event, at)), None
    )
