"""Which subscriptions an alert event reaches (stream_apps/notifier/routing.py), table by
table, and the texts, signatures and backoff of the notifier, without services."""

from __future__ import annotations

import hashlib
import hmac
import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import uuid4

import orjson
import pytest

from schemas.alerts import AlertEvent, AlertKind, AlertTransition
from schemas.common import Status
from stream_apps.notifier.channels import Outgoing, SlackChannel, WebhookChannel, render, sign
from stream_apps.notifier.routing import Subscription, matches, route
from stream_apps.notifier.service import backoff_s

pytestmark = pytest.mark.unit


def event(**over: Any) -> AlertEvent:
    doc: dict[str, Any] = {
        "event_id": uuid4(),
        "alert_id": uuid4(),
        "kind": AlertKind.THRESHOLD,
        "transition": AlertTransition.RAISED,
        "sensor_id": "TEMPIOT-A011",
        "loc_id": "A011",
        "metric": "pcv_temperature",
        "level": Status.CRITICAL,
        "measured_value": Decimal("34.10"),
        "threshold_id": 3,
        "threshold_level": "orange",
        "threshold_min": Decimal("33.00"),
        "threshold_max": None,
        "reading_time": datetime(2026, 7, 1, 5, 0, tzinfo=UTC),
        "decided_at": datetime(2026, 7, 1, 5, 1, tzinfo=UTC),
        "message": "hot",
        "plant": "P1",
        "factory": "SinPyeong",
        "building": "MX-1",
        "floor": 1,
        "area": "Storage",
    }
    doc.update(over)
    return AlertEvent(**doc)


def sub(**over: Any) -> Subscription:
    doc: dict[str, Any] = {
        "subscription_id": 1,
        "subscriber": "kim",
        "notify_type": "webhook",
        "notify_id": "https://example.invalid/hook",
    }
    doc.update(over)
    return Subscription(**doc)


ROUTING = [
    # (what, subscription fields, event fields, notified)
    ("everything NULL = any", {}, {}, True),
    ("its factory", {"factory": "SinPyeong"}, {}, True),
    ("another factory", {"factory": "JangNim"}, {}, False),
    ("factory and floor", {"factory": "SinPyeong", "floor": 1}, {}, True),
    ("another floor", {"factory": "SinPyeong", "floor": 2}, {}, False),
    ("floor 0 is a floor, not NULL", {"floor": 0}, {}, False),
    ("its building and area", {"building": "MX-1", "area": "Storage"}, {}, True),
    ("another area", {"area": "Assembly 1"}, {}, False),
    ("its plant", {"plant": "P1"}, {}, True),
    ("an event without a location vs a scope", {"factory": "SinPyeong"}, {"factory": None}, False),
    ("its sensor", {"sensor_id": "TEMPIOT-A011"}, {}, True),
    ("another sensor", {"sensor_id": "TEMPIOT-A012"}, {}, False),
    ("its metric", {"threshold_type": "pcv_temperature"}, {}, True),
    ("another metric", {"threshold_type": "humidity"}, {}, False),
    ("warning reaches warning", {"min_level": "warning"}, {"level": Status.WARNING}, True),
    ("critical reaches warning", {"min_level": "warning"}, {}, True),
    (
        "warning does not reach critical",
        {"min_level": "critical"},
        {"level": Status.WARNING},
        False,
    ),
    ("critical reaches critical", {"min_level": "critical"}, {}, True),
    ("disabled", {"enabled": False}, {}, False),
    ("escalated by default", {}, {"transition": AlertTransition.ESCALATED}, True),
    ("resolved by default", {}, {"transition": AlertTransition.RESOLVED}, True),
    ("de-escalated not by default", {}, {"transition": AlertTransition.DEESCALATED}, False),
    (
        "de-escalated when asked",
        {"transitions": ("raised", "deescalated")},
        {"transition": AlertTransition.DEESCALATED},
        True,
    ),
    (
        "resolved not when left out",
        {"transitions": ("raised",)},
        {"transition": AlertTransition.RESOLVED},
        False,
    ),
    (
        "sensor silent: opt-in only",
        {},
        {"kind": AlertKind.SENSOR_SILENT, "metric": None, "level": Status.WARNING},
        False,
    ),
    (
        "sensor silent, opted in",
        {"include_silent": True},
        {"kind": AlertKind.SENSOR_SILENT, "metric": None, "level": Status.WARNING},
        True,
    ),
    (
        "sensor silent, opted in, metric filter does not apply",
        {"include_silent": True, "threshold_type": "humidity"},
        {"kind": AlertKind.SENSOR_SILENT, "metric": None, "level": Status.WARNING},
        True,
    ),
    (
        "sensor silent, opted in, critical only",
        {"include_silent": True, "min_level": "critical"},
        {"kind": AlertKind.SENSOR_SILENT, "metric": None, "level": Status.WARNING},
        False,
    ),
]


@pytest.mark.parametrize(
    ("what", "fields", "changes", "notified"), ROUTING, ids=[r[0] for r in ROUTING]
)
def test_routing(
    what: str, fields: dict[str, Any], changes: dict[str, Any], notified: bool
) -> None:
    assert matches(sub(**fields), event(**changes)) is notified, what


def test_route_keeps_subscription_order_and_reads_rows() -> None:
    rows = [
        {
            "subscription_id": 7,
            "subscriber": "a",
            "notify_type": "slack",
            "notify_id": "u",
            "factory": "SinPyeong",
            "transitions": ["raised"],
            "created_at": "ignored",
        },
        {
            "subscription_id": 9,
            "subscriber": "b",
            "notify_type": "webhook",
            "notify_id": "u",
            "factory": "JangNim",
        },
        {"subscription_id": 11, "subscriber": "c", "notify_type": "webhook", "notify_id": "u"},
    ]
    subs = [Subscription.of(r) for r in rows]
    assert [s.subscription_id for s in route(event(), subs)] == [7, 11]


def test_texts_in_korean_and_english() -> None:
    e = event()
    ko = render(e, "ko", "https://plant.example/alerts")
    assert "[위험] 체감온도 34.10°C" in ko and "SinPyeong / MX-1 / 1층 / Storage" in ko
    assert "기준 orange (33.00 이상)" in ko and "발생 2026-07-01 14:01 KST" in ko
    assert ko.endswith("\nhttps://plant.example/alerts")
    en = render(e, "en")
    assert en.startswith("[CRITICAL] Perceived temperature 34.10°C — SinPyeong / MX-1 / 1F")
    assert "band orange (≥ 33.00): raised" in en
    silent = render(event(kind=AlertKind.SENSOR_SILENT, metric=None, level=Status.WARNING), "en")
    assert silent.startswith("[WARNING] Sensor silent — SinPyeong")


def test_webhook_body_is_signed_and_slack_payload_is_well_formed() -> None:
    e = event()
    message = Outgoing(f"{e.event_id}:1", 1, "https://x.invalid", "s3cret", e, "text")
    body = WebhookChannel.body(message)
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert sign("s3cret", body) == f"sha256={expected}"
    doc = orjson.loads(body)
    assert doc["idempotency_key"] == f"{e.event_id}:1"
    assert AlertEvent.model_validate(doc["event"]) == e
    slack = orjson.loads(SlackChannel.body(message))
    assert slack["text"] == "text"
    assert slack["blocks"] == [{"type": "section", "text": {"type": "mrkdwn", "text": "text"}}]


def test_backoff_grows_stays_under_its_cap_and_is_jittered() -> None:
    rng = random.Random(7)
    delays = [backoff_s(n, 2.0, 60.0, rng) for n in range(1, 10)]
    for n, d in enumerate(delays, start=1):
        ceiling = min(60.0, 2.0 * 2 ** (n - 1))
        assert ceiling / 2 <= d <= ceiling
    assert len({round(backoff_s(3, 2.0, 60.0, rng), 6) for _ in range(20)}) > 1
