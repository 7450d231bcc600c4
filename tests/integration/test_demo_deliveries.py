"""The demo's alert deliveries (iotmon/demo.py, iotmon/demo_receivers.py) on the real Kafka
and PostgreSQL: its subscriptions are created once and follow the receivers' new ports, its
notifier group starts at the end of the alerts topic, and an alert reaches the signed
webhook, the Slack endpoint and the SMTP sink through a real `iotmon notifier` process."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from iotmon.demo import (
    DEMO_MAX_PER_MINUTE,
    DEMO_SUBSCRIBERS,
    demo_subscriptions,
    disable_subscriptions,
    ensure_subscriptions,
    give_up_owed,
    last_notification_id,
    notifications_since,
    owed,
    report_deliveries,
    start_notifier_at_the_end,
)
from iotmon.demo_receivers import demo_receivers
from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.kafka import make_producer
from schemas.alerts import AlertEvent, AlertKind, AlertTransition
from schemas.common import Status
from schemas.topics import topic_name
from tests.helpers import wait_for
from tests.pipeline import free_port

pytestmark = pytest.mark.integration


def subscriptions(db: DatabaseSettings) -> list[dict[str, Any]]:
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        cur = conn.execute(
            "SELECT subscription_id, subscriber, notify_type, notify_id, secret, enabled,"
            " max_per_minute FROM alert_subscriptions ORDER BY subscription_id"
        )
        names = [c.name for c in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def test_the_demo_subscriptions_are_created_once_and_follow_the_receivers(
    db: DatabaseSettings,
) -> None:
    with demo_receivers("first-secret-0123456") as (webhook, _smtp):
        first = ensure_subscriptions(db, demo_subscriptions(webhook))
    with demo_receivers("second-secret-012345") as (webhook, _smtp):
        second = ensure_subscriptions(db, demo_subscriptions(webhook))
        rows = subscriptions(db)
    assert first == second and set(first) == {"webhook", "slack", "email"}
    assert len(rows) == 3  # re-running changes them, adds none
    by_type = {r["notify_type"]: r for r in rows}
    assert {t: r["subscriber"] for t, r in by_type.items()} == DEMO_SUBSCRIBERS
    assert by_type["webhook"]["notify_id"] == webhook.webhook_url  # this run's port
    assert by_type["webhook"]["secret"] == "second-secret-012345"
    assert by_type["slack"]["notify_id"] == webhook.slack_url
    assert by_type["email"]["max_per_minute"] == DEMO_MAX_PER_MINUTE
    assert all(r["enabled"] for r in rows)
    disable_subscriptions(db, list(second.values()))
    assert not any(r["enabled"] for r in subscriptions(db))
    with demo_receivers("third-secret-0123456") as (webhook, _smtp):
        assert ensure_subscriptions(db, demo_subscriptions(webhook)) == first
    assert all(r["enabled"] for r in subscriptions(db))


def critical(sensor: str) -> AlertEvent:
    now = datetime.now(UTC)
    return AlertEvent(
        event_id=uuid4(),
        alert_id=uuid4(),
        kind=AlertKind.THRESHOLD,
        transition=AlertTransition.RAISED,
        sensor_id=sensor,
        loc_id=sensor[-4:],
        metric="pcv_temperature",
        level=Status.CRITICAL,
        measured_value=Decimal("34.10"),
        threshold_id=3,
        threshold_level="orange",
        threshold_min=Decimal("33.00"),
        threshold_max=None,
        reading_time=now,
        decided_at=now,
        message="hot",
        factory="SinPyeong",
    )


def publish(kafka: KafkaSettings, event: AlertEvent) -> None:
    producer = make_producer(kafka)
    producer.produce(
        topic_name("alerts", kafka.topic_prefix),
        event.model_dump_json().encode(),
        key=event.sensor_id.encode(),
    )
    assert producer.flush(20) == 0


def committed(kafka: KafkaSettings, group: str) -> tuple[int, int]:
    """(sum of the group's committed offsets, sum of the high watermarks) on alerts."""
    name = topic_name("alerts", kafka.topic_prefix)
    consumer = Consumer({**kafka.client_config(), "group.id": group})
    try:
        parts = [
            TopicPartition(name, p)
            for p in consumer.list_topics(name, timeout=10).topics[name].partitions
        ]
        done = sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10))
        ends = sum(consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts)
    finally:
        consumer.close()
    return done, ends


def test_an_alert_reaches_every_demo_receiver_through_the_notifier(
    stack: Settings,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    group_id: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = stack.model_copy(update={"kafka": kafka, "db": db})
    earlier = critical("TEMPIOT-E001")  # an earlier run's alert: not to be sent
    publish(kafka, earlier)
    start_notifier_at_the_end(settings, group_id)
    done, ends = committed(kafka, group_id)
    assert done == ends == 1
    with demo_receivers("demo-secret-0123456789") as (webhook, smtp):
        ids = ensure_subscriptions(db, demo_subscriptions(webhook))
        after = last_notification_id(db)
        env = {
            **os.environ,
            "IOTMON_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
            "IOTMON_DB__URL": db.url,
            "IOTMON_DB__DB_SCHEMA": db.db_schema,
            "IOTMON_NOTIFIER__GROUP_ID": group_id,
            "IOTMON_NOTIFIER__METRICS_PORT": str(free_port()),
            "IOTMON_NOTIFIER__LANGUAGE": "en",
            "IOTMON_NOTIFIER__SMTP_HOST": smtp.host,
            "IOTMON_NOTIFIER__SMTP_PORT": str(smtp.port),
            "IOTMON_NOTIFIER__SMTP_STARTTLS": "false",
        }
        out = (tmp_path / "notifier.log").open("ab")
        notifier = subprocess.Popen(
            [sys.executable, "-m", "iotmon", "notifier"], env=env, stdout=out, stderr=out
        )
        try:
            event = critical("TEMPIOT-D042")
            publish(kafka, event)
            try:
                wait_for(
                    lambda: (
                        len(webhook.got("webhook")) >= 1
                        and len(webhook.got("slack")) >= 1
                        and len(smtp.got()) >= 1
                    ),
                    timeout=60,
                    what="the webhook, the Slack post and the e-mail",
                )
            except AssertionError:
                notifier.terminate()
                notifier.wait(30)
                log = (tmp_path / "notifier.log").read_text()[-3000:]
                raise AssertionError(f"not delivered; notifier log:\n{log}") from None
            wait_for(
                lambda: (
                    notifications_since(db, after)
                    == {("email", "SENT"): 1, ("slack", "SENT"): 1, ("webhook", "SENT"): 1}
                ),
                timeout=20,
                what="three SENT rows",
            )
        finally:
            notifier.terminate()
            notifier.wait(30)
        assert owed(db, after, list(ids.values())) == 0
        assert give_up_owed(db, list(ids.values())) == 0  # nothing left to give up
        [hook] = webhook.got("webhook")
        assert hook.verified is True and webhook.refused() == 0
        assert hook.idempotency_key == f"{event.event_id}:{ids['webhook']}"
        assert "TEMPIOT-D042" in hook.text
        [slack] = webhook.got("slack")
        [mail] = smtp.got()
        assert "TEMPIOT-D042" in slack.text and "TEMPIOT-D042" in mail.text
        assert mail.recipient == "safety@plant.example"
        with caplog.at_level(logging.INFO, logger="iotmon.demo"):
            report_deliveries(webhook, smtp, notifications_since(db, after))
    lines = [r.getMessage() for r in caplog.records if r.name == "iotmon.demo"]
    assert any("1 received, signature verified: yes, 0 refused" in line for line in lines)
    assert any(line.startswith("notifications of this run  webhook") for line in lines)
