"""Alert subscriptions (`/api/v1/subscriptions`) and the notification log
(`/api/v1/notifications`), with the original system's fields.

A subscription's scope fields (plant, factory, building, floor, area, sensor_id) and its
``threshold_type`` are NULL for "any" (the original never matched a NULL threshold type;
here it matches every metric).  ``min_level`` is on the one status scale warning < critical.
Both hold personal data (who is notified, at which address or webhook URL): reading them
needs a viewer token even where other reads are open.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, HTTPException, Path, Query
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from api.deps import AppSettings, CanOperate, Conn, PrivateReader, has_role
from api.filters import equal
from iotmon.settings import Settings
from schemas.alerts import TopicTemplateError, check_topic_template
from schemas.common import Metric
from schemas.master import SENSOR_ID_PATTERN

router = APIRouter(tags=["subscriptions"])

NotifyType = Literal["email", "kakao", "sms", "app", "webhook", "slack", "mqtt"]
Transition = Literal["raised", "escalated", "deescalated", "resolved"]
DEFAULT_TRANSITIONS: list[Transition] = ["raised", "escalated", "resolved"]
MinLevel = Literal["warning", "critical"]
EscalationType = Literal["email", "webhook", "slack", "mqtt"]
NotificationStatus = Literal["PENDING", "SENT", "FAILED", "RETRYING", "SUPPRESSED"]
EscalateAfter = Annotated[int | None, Field(None, ge=60, le=7 * 24 * 3600)]
PerMinute = Annotated[int | None, Field(None, ge=0, le=10_000)]
Name = Annotated[str | None, Field(None, min_length=1, max_length=100)]

_FIELDS = (
    "plant",
    "factory",
    "building",
    "floor",
    "area",
    "sensor_id",
    "threshold_type",
    "min_level",
    "subscriber",
    "notify_type",
    "notify_id",
    "enabled",
    "transitions",
    "include_silent",
    "escalate_after_s",
    "escalate_type",
    "escalate_to",
    "max_per_minute",
)
_COLUMNS = sql.SQL(", ").join(
    [
        *(sql.Identifier(c) for c in ("subscription_id", *_FIELDS, "created_at", "updated_at")),
        sql.SQL("secret IS NOT NULL AS has_secret"),
    ]
)


class SubscriptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plant: Name = None
    factory: Name = None
    building: Name = None
    floor: int | None = Field(None, ge=-100, le=500)
    area: Name = None
    sensor_id: str | None = Field(None, pattern=SENSOR_ID_PATTERN)
    threshold_type: Metric | None = None
    min_level: MinLevel = "warning"
    subscriber: str = Field(min_length=1, max_length=100)
    notify_type: NotifyType
    notify_id: str = Field(min_length=1, max_length=500)
    enabled: bool = True
    # Which alert state changes notify; sensor-silent alerts only when asked.
    transitions: list[Transition] = Field(
        default_factory=lambda: list(DEFAULT_TRANSITIONS), min_length=1, max_length=4
    )
    include_silent: bool = False
    # Key of a webhook's HMAC-SHA256 signature header; write-only (never shown again).
    secret: str | None = Field(None, min_length=16, max_length=200, exclude=True)
    # A critical alert still unacknowledged this long after it was notified goes to
    # escalate_to (through escalate_type) too.  All three, or none.
    escalate_after_s: EscalateAfter = None
    escalate_type: EscalationType | None = None
    escalate_to: str | None = Field(None, min_length=1, max_length=500)
    # Messages a minute to notify_id, beyond which events go out as one digest; None: the
    # notifier's default; 0: no limit.
    max_per_minute: PerMinute = None

    @model_validator(mode="after")
    def _target_fits_channel(self) -> SubscriptionIn:
        _check_target(self.notify_type, self.notify_id, "notify_id")
        if len(set(self.transitions)) != len(self.transitions):
            raise ValueError("transitions must not repeat")
        escalation = (self.escalate_after_s, self.escalate_type, self.escalate_to)
        if any(v is not None for v in escalation) and any(v is None for v in escalation):
            raise ValueError(
                "escalation needs escalate_after_s, escalate_type and escalate_to together"
            )
        if self.escalate_type is not None and self.escalate_to is not None:
            _check_target(self.escalate_type, self.escalate_to, "escalate_to")
        return self


# One address, no display name, nothing a mail header could be split at.
EMAIL = re.compile(r"[^@\s,;<>()\[\]\\\"]+@[^@\s,;<>()\[\]\\\"]+\.[^@\s,;<>()\[\]\\\"]+")


def mask_url(kind: str | None, target: str | None) -> str | None:
    """A webhook's or Slack's URL as a viewer sees it: scheme and host only.  Such URLs
    often carry the credential (a Slack incoming webhook's path is one): whoever holds
    them can post.  Operators see them whole."""
    if target is None or kind not in ("webhook", "slack"):
        return target
    scheme, _, rest = target.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{host}/…"


def _for(caller: Any, sub: Subscription) -> Subscription:
    if has_role(caller, "operator"):
        return sub
    return sub.model_copy(
        update={
            "notify_id": mask_url(sub.notify_type, sub.notify_id),
            "escalate_to": mask_url(sub.escalate_type, sub.escalate_to),
        }
    )


def _check_target(kind: str, target: str, name: str) -> None:
    """Whether ``target`` can be an address of the ``kind`` channel (ValueError if not)."""
    if kind == "webhook" and not target.startswith(("http://", "https://")):
        raise ValueError(f"a webhook's {name} must be an http:// or https:// URL")
    if kind == "slack" and not target.startswith("https://"):
        raise ValueError(f"a slack {name} must be an incoming-webhook https:// URL")
    if kind == "email" and not EMAIL.fullmatch(target):
        raise ValueError(f"an email's {name} must be one address (name@domain)")
    if kind == "mqtt":
        try:
            check_topic_template(target)
        except TopicTemplateError as exc:
            raise ValueError(f"an mqtt {name}: {exc}") from None


def _check_root(body: SubscriptionIn, settings: Settings) -> None:
    """MQTT topics must lie in the notifier's own tree (the only one it may publish to)."""
    root = settings.notifier.mqtt_topic_root
    targets = ((body.notify_type, body.notify_id), (body.escalate_type, body.escalate_to))
    for kind, target in targets:
        if kind == "mqtt" and target is not None and not target.startswith(f"{root}/"):
            raise HTTPException(
                422, f"an mqtt topic must begin with {root}/ (where the notifier publishes)"
            )


class SubscriptionPatch(BaseModel):
    """Any subset of the fields; the merged subscription is validated as a whole."""

    model_config = ConfigDict(extra="forbid")

    plant: Name = None
    factory: Name = None
    building: Name = None
    floor: int | None = Field(None, ge=-100, le=500)
    area: Name = None
    sensor_id: str | None = Field(None, pattern=SENSOR_ID_PATTERN)
    threshold_type: Metric | None = None
    min_level: MinLevel | None = None
    subscriber: str | None = Field(None, min_length=1, max_length=100)
    notify_type: NotifyType | None = None
    notify_id: str | None = Field(None, min_length=1, max_length=500)
    enabled: bool | None = None
    transitions: list[Transition] | None = Field(None, min_length=1, max_length=4)
    include_silent: bool | None = None
    secret: str | None = Field(None, min_length=16, max_length=200)
    escalate_after_s: EscalateAfter = None
    escalate_type: EscalationType | None = None
    escalate_to: str | None = Field(None, min_length=1, max_length=500)
    max_per_minute: PerMinute = None


class Subscription(SubscriptionIn):
    """A stored subscription, as the API answers it."""

    model_config = ConfigDict(extra="ignore")

    def _target_fits_channel(self) -> Subscription:  # type: ignore[override]
        # What is stored is shown as it is: a row written before a rule was tightened, or
        # by a tool (the demo's local Slack endpoint is plain http), must not make a read
        # fail.  Writes are checked, as SubscriptionIn.
        return self

    subscription_id: int
    created_at: datetime
    updated_at: datetime
    has_secret: bool = False


class Notification(BaseModel):
    notification_id: int
    alert_id: UUID
    event_id: UUID
    subscription_id: int
    notify_type: str
    notify_id: str
    status: str
    try_count: int
    created_at: datetime
    sent_time: datetime | None
    fail_reason: str | None
    idempotency_key: str | None = None
    purpose: str = "alert"  # or "escalation"
    silence_id: int | None = None  # the silence that suppressed it


SubscriptionId = Annotated[int, Path(ge=1, le=2**62)]
Skip = Annotated[int, Query(ge=0, le=1_000_000)]
Limit = Annotated[int, Query(ge=1, le=1000)]


async def _get(conn: Conn, subscription_id: int) -> Subscription:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL("SELECT {} FROM alert_subscriptions WHERE subscription_id = %s").format(
                _COLUMNS
            ),
            (subscription_id,),
        )
        row = await cur.fetchone()
    if row is None:
        raise HTTPException(404, f"subscription {subscription_id} does not exist")
    return Subscription.model_validate(row)


async def _write(conn: Conn, query: sql.Composed, params: dict[str, Any]) -> Subscription:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        row = await cur.fetchone()
    await conn.commit()
    if row is None:
        raise HTTPException(404, f"subscription {params.get('subscription_id')} does not exist")
    return Subscription.model_validate(row)


@router.get("/subscriptions/")
async def list_subscriptions(
    caller: PrivateReader,
    conn: Conn,
    skip: Skip = 0,
    limit: Limit = 100,
    subscriber: Annotated[str | None, Query(max_length=100)] = None,
    notify_type: NotifyType | None = None,
    factory: Annotated[str | None, Query(max_length=100)] = None,
    enabled: bool | None = None,
) -> list[Subscription]:
    conditions, params = equal(
        {
            "subscriber": subscriber,
            "notify_type": notify_type,
            "factory": factory,
            "enabled": enabled,
        }
    )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL(
                "SELECT {} FROM alert_subscriptions WHERE {} ORDER BY subscription_id"
                " OFFSET %s LIMIT %s"
            ).format(_COLUMNS, sql.SQL(" AND ").join(conditions)),
            [*params, skip, limit],
        )
        return [_for(caller, Subscription.model_validate(r)) for r in await cur.fetchall()]


@router.get("/subscriptions/{subscription_id}")
async def get_subscription(
    caller: PrivateReader, conn: Conn, subscription_id: SubscriptionId
) -> Subscription:
    return _for(caller, await _get(conn, subscription_id))


@router.post("/subscriptions/", status_code=201, dependencies=[CanOperate])
async def create_subscription(
    conn: Conn, settings: AppSettings, body: SubscriptionIn
) -> Subscription:
    _check_root(body, settings)
    return await _write(
        conn,
        sql.SQL("INSERT INTO alert_subscriptions ({}) VALUES ({}) RETURNING {}").format(
            sql.SQL(", ").join(sql.Identifier(f) for f in (*_FIELDS, "secret")),
            sql.SQL(", ").join(sql.Placeholder(f) for f in (*_FIELDS, "secret")),
            _COLUMNS,
        ),
        {**body.model_dump(), "secret": body.secret},
    )


_UPDATE = sql.SQL(
    "UPDATE alert_subscriptions SET ({}) = ({}), secret = coalesce(%(secret)s, secret),"
    " updated_at = now() WHERE subscription_id = %(subscription_id)s RETURNING {}"
).format(
    sql.SQL(", ").join(sql.Identifier(f) for f in _FIELDS),
    sql.SQL(", ").join(sql.Placeholder(f) for f in _FIELDS),
    _COLUMNS,
)


@router.put("/subscriptions/{subscription_id}", dependencies=[CanOperate])
async def update_subscription(
    conn: Conn, settings: AppSettings, subscription_id: SubscriptionId, body: SubscriptionPatch
) -> Subscription:
    current = await _get(conn, subscription_id)
    merged_fields = {
        **current.model_dump(include=set(_FIELDS)),
        **body.model_dump(exclude_unset=True),
    }
    try:
        merged = SubscriptionIn.model_validate(merged_fields)
    except ValidationError as exc:
        raise HTTPException(422, "; ".join(e["msg"] for e in exc.errors())) from None
    _check_root(merged, settings)
    return await _write(
        conn,
        _UPDATE,
        {**merged.model_dump(), "secret": body.secret, "subscription_id": subscription_id},
    )


async def _set_enabled(conn: Conn, subscription_id: int, enabled: bool) -> Subscription:
    return await _write(
        conn,
        sql.SQL(
            "UPDATE alert_subscriptions SET enabled = %(enabled)s, updated_at = now()"
            " WHERE subscription_id = %(subscription_id)s RETURNING {}"
        ).format(_COLUMNS),
        {"enabled": enabled, "subscription_id": subscription_id},
    )


@router.post("/subscriptions/{subscription_id}/enable", dependencies=[CanOperate])
async def enable(conn: Conn, subscription_id: SubscriptionId) -> Subscription:
    return await _set_enabled(conn, subscription_id, True)


@router.post("/subscriptions/{subscription_id}/disable", dependencies=[CanOperate])
async def disable(conn: Conn, subscription_id: SubscriptionId) -> Subscription:
    return await _set_enabled(conn, subscription_id, False)


@router.delete("/subscriptions/{subscription_id}", dependencies=[CanOperate])
async def delete_subscription(conn: Conn, subscription_id: SubscriptionId) -> Subscription:
    """Delete the subscription (and its notification log); returns what was deleted."""
    current = await _get(conn, subscription_id)
    await conn.execute(
        "DELETE FROM alert_subscriptions WHERE subscription_id = %s", (subscription_id,)
    )
    await conn.commit()
    return current


def note_for(caller: Any, row: dict[str, Any]) -> Notification:
    found = Notification.model_validate(row)
    if has_role(caller, "operator"):
        return found
    return found.model_copy(update={"notify_id": mask_url(found.notify_type, found.notify_id)})


@router.get("/notifications/")
async def notifications(
    caller: PrivateReader,
    conn: Conn,
    skip: Skip = 0,
    limit: Limit = 100,
    alert_id: UUID | None = None,
    subscription_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    status: NotificationStatus | None = None,
) -> list[Notification]:
    """The notification log, newest first."""
    conditions, params = equal(
        {"alert_id": alert_id, "subscription_id": subscription_id, "status": status}
    )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            sql.SQL(
                "SELECT notification_id, alert_id, event_id, subscription_id, notify_type,"
                " notify_id, status, try_count, created_at, sent_time, fail_reason,"
                " idempotency_key, purpose, silence_id"
                " FROM notifications WHERE {} ORDER BY created_at DESC, notification_id DESC"
                " OFFSET %s LIMIT %s"
            ).format(sql.SQL(" AND ").join(conditions)),
            [*params, skip, limit],
        )
        return [note_for(caller, r) for r in await cur.fetchall()]


# The original system's read endpoints of the log (same rows, same order).
@router.get("/notifications/pending")
async def pending_notifications(
    caller: PrivateReader, conn: Conn, skip: Skip = 0, limit: Limit = 100
) -> list[Notification]:
    """Owed and not yet sent: PENDING and RETRYING."""
    rows = await notifications(caller, conn, skip, limit, status="PENDING")
    return rows + await notifications(caller, conn, skip, limit, status="RETRYING")


@router.get("/notifications/failed")
async def failed_notifications(
    caller: PrivateReader, conn: Conn, skip: Skip = 0, limit: Limit = 100
) -> list[Notification]:
    return await notifications(caller, conn, skip, limit, status="FAILED")


@router.get("/notifications/alert/{alert_id}")
async def notifications_of_alert(
    caller: PrivateReader, conn: Conn, alert_id: UUID, skip: Skip = 0, limit: Limit = 100
) -> list[Notification]:
    return await notifications(caller, conn, skip, limit, alert_id=alert_id)


@router.get("/notifications/subscription/{subscription_id}")
async def notifications_of_subscription(
    caller: PrivateReader,
    conn: Conn,
    subscription_id: SubscriptionId,
    skip: Skip = 0,
    limit: Limit = 100,
) -> list[Notification]:
    return await notifications(caller, conn, skip, limit, subscription_id=subscription_id)


@router.get("/notifications/{notification_id}")
async def get_notification(
    caller: PrivateReader, conn: Conn, notification_id: Annotated[int, Path(ge=1, le=2**62)]
) -> Notification:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT notification_id, alert_id, event_id, subscription_id, notify_type,"
            " notify_id, status, try_count, created_at, sent_time, fail_reason,"
            " idempotency_key, purpose, silence_id FROM notifications"
            " WHERE notification_id = %s",
            (notification_id,),
        )
        row = await cur.fetchone()
    if row is None:
        raise HTTPException(404, f"notification {notification_id} does not exist")
    return note_for(caller, row)
