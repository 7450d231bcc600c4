"""The notifier's controls on the real Kafka, PostgreSQL and Mosquitto: silences that
suppress and log, escalation of unacknowledged critical alerts, rate limits with digests,
and the retained alert state of each location on MQTT."""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import orjson
import paho.mqtt.client as mqtt_client
import psycopg
import pytest

from iotmon.mqtt_auth import AuthDir
from iotmon.settings import (
    ALERTS_ROOT,
    NOTIFIER_ACCOUNT,
    DatabaseSettings,
    KafkaSettings,
    MqttSettings,
    Settings,
    notifier_mqtt,
)
from iotmon.stack import Stack
from producers.kafka import make_producer
from producers.mqtt_connect import apply_login
from schemas.alerts import AlertEvent, AlertTransition
from schemas.common import Status
from schemas.topics import topic_name
from stream_apps.notifier.channels import IDEMPOTENCY_HEADER, SIGNATURE_HEADER
from tests.helpers import gateway_settings, mqtt_login_works, wait_for
from tests.integration.test_notifier import (
    Receivers,
    Running,
    alert,
    publish,
    settings_for,
    subscribe,
)
from tests.pipeline import IotmonProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    r = Receivers()
    yield r
    r.close()


def query(db: DatabaseSettings, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def store_alert(db: DatabaseSettings, e: AlertEvent, acknowledged_by: str | None = None) -> None:
    """The alert as the alert sink would have stored it (state active)."""
    query(
        db,
        "INSERT INTO alerts (alert_id, kind, sensor_id, loc_id, alert_type, alert_level, state,"
        " message, alert_time, updated_at, acknowledged_at, acknowledged_by)"
        " VALUES (%s, %s, %s, %s, %s, %s, 'active', %s, %s, now(),"
        " CASE WHEN %s::text IS NULL THEN NULL ELSE now() END, %s)",
        (
            e.alert_id,
            e.kind.value,
            e.sensor_id,
            e.loc_id,
            e.metric,
            e.level.value,
            e.message,
            e.decided_at,
            acknowledged_by,
            acknowledged_by,
        ),
    )


def rows_by_event(db: DatabaseSettings) -> dict[Any, tuple[Any, ...]]:
    """event id -> (status, silence_id, fail_reason, purpose, sent_as, subscription)."""
    rows = query(
        db,
        "SELECT event_id, status, silence_id, fail_reason, purpose, sent_as, subscription_id"
        " FROM notifications",
    )
    return {r[0]: r[1:] for r in rows}


def test_a_silence_suppresses_its_scope_logs_it_and_lets_the_rest_through(
    stack: Settings,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    group_id: str,
    receivers: Receivers,
) -> None:
    sub = subscribe(db, notify_id=f"{receivers.url}/ok")
    [(silence,)] = query(
        db,
        "INSERT INTO silences (factory, threshold_type, starts_at, ends_at, reason, created_by)"
        " VALUES ('SinPyeong', 'pcv_temperature', now() - interval '1 minute',"
        " now() + interval '1 hour', 'line 3 maintenance', 'lee') RETURNING silence_id",
    )
    muted = alert(factory="SinPyeong")
    elsewhere = alert(sensor="TEMPIOT-B001", factory="JangNim")
    other_metric = alert(sensor="TEMPIOT-B002").model_copy(update={"metric": "humidity"})
    before = alert(sensor="TEMPIOT-B003").model_copy(
        update={"decided_at": datetime.now(UTC) - timedelta(minutes=10)}
    )
    running = Running(settings_for(stack, kafka, db, group_id))
    try:
        publish(kafka, [muted, elsewhere, other_metric, before])
        wait_for(lambda: len(receivers.to("/ok")) == 3, timeout=30, what="three webhooks")
        wait_for(lambda: len(rows_by_event(db)) == 4, timeout=30, what="four log rows")
    finally:
        running.close()
    rows = rows_by_event(db)
    status, silence_id, reason, purpose, sent_as, _ = rows[muted.event_id]
    assert (status, silence_id, purpose, sent_as) == ("SUPPRESSED", silence, "alert", None)
    assert reason == f"silenced by #{silence} (lee): line 3 maintenance"
    for e in (elsewhere, other_metric, before):
        assert rows[e.event_id][0] == "SENT"
    keys = {r.headers[IDEMPOTENCY_HEADER] for r in receivers.to("/ok")}
    assert keys == {f"{e.event_id}:{sub}" for e in (elsewhere, other_metric, before)}
    assert (
        running.registry.get_sample_value("iotmon_notifier_suppressed_total", {"reason": "silence"})
        == 1.0
    )


def test_an_unacknowledged_critical_alert_escalates_once_and_an_acknowledged_one_not(
    stack: Settings,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    group_id: str,
    receivers: Receivers,
) -> None:
    sub = subscribe(
        db,
        notify_id=f"{receivers.url}/ok",
        secret="escalation-secret-1",
        escalate_after_s=2,
        escalate_type="webhook",
        escalate_to=f"{receivers.url}/escalate",
    )
    ignored = alert(sensor="TEMPIOT-C001")
    acknowledged = alert(sensor="TEMPIOT-C002")
    warning = alert(sensor="TEMPIOT-C003").model_copy(update={"level": Status.WARNING})
    for e in (ignored, warning):
        store_alert(db, e)
    store_alert(db, acknowledged, acknowledged_by="park")
    # An escalation already written when its alert was acknowledged: never sent.
    late_ack = alert(sensor="TEMPIOT-C004")
    store_alert(db, late_ack, acknowledged_by="choi")
    query(
        db,
        "INSERT INTO notifications (alert_id, event_id, subscription_id, notify_type, notify_id,"
        " payload, purpose) VALUES (%s, %s, %s, 'webhook', %s, %s, 'escalation')",
        (
            late_ack.alert_id,
            late_ack.alert_id,
            sub,
            f"{receivers.url}/escalate",
            late_ack.model_dump_json(),
        ),
    )
    running = Running(settings_for(stack, kafka, db, group_id))
    try:
        publish(kafka, [ignored, acknowledged, warning])
        wait_for(lambda: len(receivers.to("/ok")) == 3, timeout=30, what="the three alerts")
        wait_for(lambda: len(receivers.to("/escalate")) == 1, timeout=30, what="an escalation")
        # Both critical alerts were due at the same moment; give the notifier several more
        # looks (every 0.5 s) in which a wrong second escalation would go out.
        time.sleep(2.0)
    finally:
        running.close()
    [got] = receivers.to("/escalate")
    assert got.headers[IDEMPOTENCY_HEADER] == f"{ignored.alert_id}:{sub}:escalation"
    expected = hmac.new(b"escalation-secret-1", got.body, hashlib.sha256).hexdigest()
    assert got.headers[SIGNATURE_HEADER] == f"sha256={expected}"
    doc = orjson.loads(got.body)
    assert doc["kind"] == "escalation"
    assert doc["event"]["alert_id"] == str(ignored.alert_id)
    assert doc["text"].startswith("[ESCALATION] critical alert not acknowledged for 2 s")
    escalations = query(
        db,
        "SELECT alert_id, status, fail_reason FROM notifications WHERE purpose = 'escalation'",
    )
    assert {r[0]: r[1] for r in escalations} == {
        ignored.alert_id: "SENT",
        late_ack.alert_id: "SUPPRESSED",
    }
    assert next(r[2] for r in escalations if r[0] == late_ack.alert_id) == (
        "acknowledged by choi before the escalation went out"
    )


def test_a_rate_limit_sends_a_digest_and_loses_no_event(
    stack: Settings,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    group_id: str,
    receivers: Receivers,
) -> None:
    sub = subscribe(
        db, notify_id=f"{receivers.url}/ok", secret="digest-secret-123", max_per_minute=3
    )
    events = [alert(sensor=f"TEMPIOT-D{n:03d}") for n in range(10)]
    # Ten owed at once, as intake writes them after reading a burst (written here, so
    # that they are claimed together whatever batches the consumer would have read).
    for e in events:
        query(
            db,
            "INSERT INTO notifications (alert_id, event_id, subscription_id, notify_type,"
            " notify_id, payload) VALUES (%s, %s, %s, 'webhook', %s, %s)",
            (e.alert_id, e.event_id, sub, f"{receivers.url}/ok", e.model_dump_json()),
        )
    running = Running(settings_for(stack, kafka, db, group_id))
    try:
        wait_for(
            lambda: [r[0] for r in rows_by_event(db).values()] == ["SENT"] * 10,
            timeout=30,
            what="ten notifications sent",
        )
        # Over the limit now: two more wait for the minute's oldest message to age out (the
        # first of them postponed; the second with it, or in line behind it).
        later = [alert(sensor=f"TEMPIOT-E{n:03d}") for n in range(2)]
        publish(kafka, later)
        wait_for(
            lambda: (
                (running.registry.get_sample_value("iotmon_notifier_postponed_total") or 0) >= 1
                and len(rows_by_event(db)) == 12
            ),
            timeout=30,
            what="the first over the limit, postponed",
        )
        time.sleep(1.0)  # ten more looks for owed rows (poll_s 0.1): none may go out
    finally:
        running.close()
    messages = receivers.to("/ok")
    assert len(messages) == 3  # the limit: two one by one, then a digest of the other eight
    carried: list[str] = []
    digests = 0
    for m in messages:
        expected = hmac.new(b"digest-secret-123", m.body, hashlib.sha256).hexdigest()
        assert m.headers[SIGNATURE_HEADER] == f"sha256={expected}"
        doc = orjson.loads(m.body)
        if doc["kind"] == "digest":
            digests += 1
            assert m.headers[IDEMPOTENCY_HEADER].startswith(f"digest:{sub}:")
            assert doc["text"].startswith(f"[DIGEST] {len(doc['events'])} alert notifications")
            carried += [e["event_id"] for e in doc["events"]]
        else:
            carried.append(doc["event"]["event_id"])
    assert digests == 1
    assert carried == [str(e.event_id) for e in events]  # each once, in order
    rows = rows_by_event(db)
    keys = {m.headers[IDEMPOTENCY_HEADER] for m in messages}
    assert {rows[e.event_id][4] for e in events} == keys  # sent_as: the message's key
    waiting = query(
        db,
        "SELECT n.status, n.next_attempt_at - (SELECT min(sent_time) FROM notifications"
        " WHERE status = 'SENT') FROM notifications n WHERE n.event_id = ANY(%s)"
        " ORDER BY n.notification_id",
        ([e.event_id for e in later],),
    )
    assert [w[0] for w in waiting] == ["PENDING", "PENDING"]
    assert waiting[0][1] >= timedelta(seconds=59)  # due when the minute's oldest ages out


# -- MQTT ---------------------------------------------------------------------------------


@pytest.fixture
def reader(stack: Settings, test_id: str) -> Iterator[MqttSettings]:
    """A read-only account on the alert states (an andon board), and the notifier's
    account as the local stack creates it."""
    assert stack.mqtt.auth_dir is not None
    auth = AuthDir(stack.mqtt.auth_dir)
    auth.add_service(NOTIFIER_ACCOUNT, write=[f"{ALERTS_ROOT}/#"], read=[])
    name = f"board-{test_id}"
    auth.save_credential(name, auth.add(name, "reader", read=[f"{ALERTS_ROOT}/#"]))
    Stack(stack).mosquitto.reload()
    settings = stack.mqtt.model_copy(
        update={
            "username": name,
            "password": None,
            "password_file": auth.credential_file(name),
            "client_id": name,
        }
    )
    mqtt_login_works(settings)
    yield settings
    auth.revoke(name)
    Stack(stack).mosquitto.reload()


def retained(settings: MqttSettings, topic_filter: str, count: int) -> dict[str, Any]:
    """What a board that connects now sees: the retained messages under ``topic_filter``
    (waiting for ``count`` of them), by topic."""
    got: dict[str, Any] = {}
    done = threading.Event()

    def on_message(c: Any, u: Any, msg: mqtt_client.MQTTMessage) -> None:
        assert msg.retain  # sent because we subscribed: the retained state
        got[msg.topic] = orjson.loads(msg.payload) if msg.payload else None
        if len(got) >= count:
            done.set()

    client = mqtt_client.Client(
        mqtt_client.CallbackAPIVersion.VERSION2, client_id=settings.username or ""
    )
    apply_login(client, settings)
    client.on_message = on_message
    client.on_connect = lambda c, u, f, r, p: c.subscribe(topic_filter, qos=1)
    client.connect(settings.host, settings.port)
    client.loop_start()
    try:
        assert done.wait(10), f"retained under {topic_filter}: {got}"
    finally:
        client.loop_stop()
        client.disconnect()
    return got


def test_mqtt_boards_see_the_retained_state_of_each_location(
    stack: Settings,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    mqtt: MqttSettings,
    group_id: str,
    test_id: str,
    reader: MqttSettings,
) -> None:
    factory = f"F-{test_id}"
    subscribe(
        db,
        notify_type="mqtt",
        notify_id="alerts/{factory}/{loc_id}",
        factory=factory,
        include_silent=True,
    )
    hot = alert(sensor="TEMPIOT-A011", factory=factory)
    humid = alert(sensor="TEMPIOT-A011", factory=factory).model_copy(
        update={"metric": "humidity", "level": Status.WARNING}
    )
    other = alert(sensor="TEMPIOT-A012", factory=factory)
    store_alert(db, humid)  # active in the database already (the sink was quicker)
    running = Running(settings_for(stack, kafka, db, group_id))
    try:
        publish(kafka, [hot, other])
        wait_for(
            lambda: [r[0] for r in rows_by_event(db).values()] == ["SENT", "SENT"],
            timeout=30,
            what="two states published",
        )
        states = retained(reader, f"alerts/{factory}/#", 2)
        a011 = states[f"alerts/{factory}/A011"]
        assert a011["state"] == "critical" and a011["factory"] == factory
        assert {(a["metric"], a["level"]) for a in a011["active"]} == {
            ("pcv_temperature", "critical"),
            ("humidity", "warning"),
        }
        assert a011["last_event"]["event_id"] == str(hot.event_id)
        assert states[f"alerts/{factory}/A012"]["state"] == "critical"

        # The hot alert resolves: the location is still warning (humidity), not normal.
        resolved = hot.model_copy(
            update={"event_id": uuid4(), "transition": AlertTransition.RESOLVED}
        )
        publish(kafka, [resolved])
        wait_for(
            lambda: rows_by_event(db).get(resolved.event_id, ("",))[0] == "SENT",
            timeout=30,
            what="the resolved state",
        )
    finally:
        running.close()
    a011 = retained(reader, f"alerts/{factory}/A011", 1)[f"alerts/{factory}/A011"]
    assert a011["state"] == "warning"
    assert [a["metric"] for a in a011["active"]] == ["humidity"]

    # Only the notifier writes there: a gateway's forged state is dropped by the broker.
    forger = mqtt_client.Client(mqtt_client.CallbackAPIVersion.VERSION2)
    apply_login(forger, gateway_settings(mqtt))
    forger.connect(mqtt.host, mqtt.port)
    forger.loop_start()
    try:
        forger.publish(
            f"alerts/{factory}/A011", b'{"state": "normal"}', qos=1, retain=True
        ).wait_for_publish(10)
    finally:
        forger.loop_stop()
        forger.disconnect()
    assert retained(reader, f"alerts/{factory}/A011", 1)[f"alerts/{factory}/A011"] == a011
    # Leave no state of this test on the shared broker (an empty retained message clears).
    clearer = mqtt_client.Client(mqtt_client.CallbackAPIVersion.VERSION2)
    apply_login(clearer, notifier_mqtt(stack))
    clearer.connect(stack.mqtt.host, stack.mqtt.port)
    clearer.loop_start()
    try:
        for loc in ("A011", "A012"):
            clearer.publish(f"alerts/{factory}/{loc}", b"", qos=1, retain=True).wait_for_publish(10)
    finally:
        clearer.loop_stop()
        clearer.disconnect()


# -- SIGKILL during a burst ---------------------------------------------------------------


def test_sigkill_during_a_burst_then_restart_delivers_every_pair_at_most_the_in_flight_twice(
    kafka: KafkaSettings,
    db: DatabaseSettings,
    group_id: str,
    receivers: Receivers,
    tmp_path: Path,
) -> None:
    subs = [subscribe(db, notify_id=f"{receivers.url}/slow") for _ in range(2)]
    events = [alert(sensor=f"TEMPIOT-K{n:03d}") for n in range(150)]
    expected = {f"{e.event_id}:{s}" for e in events for s in subs}
    env = {
        **os.environ,
        "IOTMON_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        "IOTMON_DB__URL": db.url,
        "IOTMON_DB__DB_SCHEMA": db.db_schema,
        "IOTMON_NOTIFIER__GROUP_ID": group_id,
        "IOTMON_NOTIFIER__MAX_PER_MINUTE": "0",
        "IOTMON_NOTIFIER__TIMEOUT_S": "2",
        "IOTMON_NOTIFIER__LEASE_S": "3",
        "IOTMON_NOTIFIER__POLL_S": "0.1",
        "IOTMON_NOTIFIER__METRICS_PORT": "0",
        "IOTMON_LOG__LEVEL": "INFO",
    }
    log = tmp_path / "notifier.log"
    publish(kafka, events)
    first = IotmonProcess(env, log, "notifier").start()
    try:
        wait_for(lambda: len(receivers.to("/slow")) >= 100, timeout=60, what="100 deliveries")
        first.kill()
    finally:
        first.stop()
    killed_at = len(receivers.to("/slow"))
    sent_before = query(db, "SELECT count(*) FROM notifications WHERE status = 'SENT'")[0][0]
    assert sent_before < len(expected), "the burst was over before the kill"
    second = IotmonProcess(env, log, "notifier").start()
    try:
        wait_for(
            lambda: (
                query(db, "SELECT count(*) FROM notifications WHERE status = 'SENT'")[0][0]
                == len(expected)
            ),
            timeout=90,
            what=f"all {len(expected)} pairs sent after the restart ({log})",
        )
    finally:
        second.stop()
    keys = Counter(r.headers[IDEMPOTENCY_HEADER] for r in receivers.to("/slow"))
    assert set(keys) == expected  # every pair delivered, nothing else
    repeats = {k: n for k, n in keys.items() if n > 1}
    # One message per subscription can be on the wire when the process dies (each
    # subscription's messages go out one at a time); only those may come twice, with the
    # same key, so that the receiver can drop the repeat.
    assert len(repeats) <= len(subs) and all(n == 2 for n in repeats.values()), repeats
    assert killed_at >= 100
    statuses = query(db, "SELECT status, try_count FROM notifications")
    assert {s for s, _ in statuses} == {"SENT"}
    assert sum(t for _, t in statuses) == len(expected)  # a lost record is not an attempt


# -- what the review of the delivery found ---------------------------------------------------


def test_poison_on_the_topic_and_in_the_log_is_set_aside_and_delivery_goes_on(
    stack: Settings,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    group_id: str,
    receivers: Receivers,
) -> None:
    """A NUL in a text (PostgreSQL's jsonb refuses it), a time without a zone (it cannot be
    compared with a silence) and an unreadable payload in the log each once crash-looped
    the notifier; each is now dead-lettered or recorded, and the rest is delivered."""
    from schemas.deadletters import DeadLetterHeaders  # noqa: PLC0415
    from tests.helpers import headers_of, read_topic  # noqa: PLC0415

    sub = subscribe(
        db,
        notify_id=f"{receivers.url}/ok",
        escalate_after_s=1,
        escalate_type="webhook",
        escalate_to=f"{receivers.url}/escalate",
    )
    query(
        db,
        "INSERT INTO silences (starts_at, ends_at, reason, created_by) VALUES"
        " (now() - interval '1 day', now() - interval '23 hours', 'yesterday', 'lee')",
    )
    nul = alert(sensor="TEMPIOT-P001").model_copy(update={"message": "hot\x00"})
    naive = orjson.loads(alert(sensor="TEMPIOT-P002").model_dump_json())
    naive["decided_at"] = "2026-12-05T04:00:00"
    unreadable = alert(sensor="TEMPIOT-P003")
    store_alert(db, unreadable)
    query(
        db,
        "INSERT INTO notifications (alert_id, event_id, subscription_id, notify_type,"
        " notify_id, payload, status, sent_time, created_at) VALUES (%s, %s, %s, 'webhook',"
        " 'http://x.invalid/', %s, 'SENT', now(), now() - interval '1 minute')",
        (
            unreadable.alert_id,
            unreadable.event_id,
            sub,
            '{"level": "critical", "transition": "raised"}',
        ),
    )
    good = alert(sensor="TEMPIOT-P004")
    producer = make_producer(kafka)
    alerts_topic = topic_name("alerts", kafka.topic_prefix)
    producer.produce(alerts_topic, nul.model_dump_json().encode(), key=b"TEMPIOT-P001")
    producer.produce(alerts_topic, orjson.dumps(naive), key=b"TEMPIOT-P002")
    producer.produce(alerts_topic, good.model_dump_json().encode(), key=b"TEMPIOT-P004")
    assert producer.flush(20) == 0
    running = Running(settings_for(stack, kafka, db, group_id))
    try:
        wait_for(lambda: len(receivers.to("/ok")) == 1, timeout=30, what="the good event")
        dead = read_topic(
            kafka, topic_name("dead_letters", kafka.topic_prefix), until=lambda m: len(m) >= 2
        )
        wait_for(
            lambda: bool(query(db, "SELECT 1 FROM notifications WHERE purpose = 'escalation'")),
            timeout=30,
            what="the unreadable row's escalation, recorded",
        )
        later = alert(sensor="TEMPIOT-P005")
        publish(kafka, [later])
        wait_for(lambda: len(receivers.to("/ok")) == 2, timeout=30, what="a later event")
    finally:
        running.close()
    assert sorted(m.key() or b"" for m in dead) == [b"TEMPIOT-P001", b"TEMPIOT-P002"]
    assert {headers_of(m)[DeadLetterHeaders.STAGE] for m in dead} == {b"notifier"}
    [(status, reason)] = query(
        db, "SELECT status, fail_reason FROM notifications WHERE purpose = 'escalation'"
    )
    assert status == "FAILED" and "unreadable" in reason
    assert not receivers.to("/escalate")


def test_a_retry_keeps_the_order_of_a_subscriptions_messages(
    stack: Settings,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    group_id: str,
    receivers: Receivers,
) -> None:
    """A raised event that needs retries is not overtaken by its own resolution: a board
    that keeps the last message must not be left showing an alert that is over."""
    subscribe(db, notify_id=f"{receivers.url}/flaky")
    raised = alert(sensor="TEMPIOT-R001")
    resolved = raised.model_copy(
        update={"event_id": uuid4(), "transition": AlertTransition.RESOLVED}
    )
    running = Running(settings_for(stack, kafka, db, group_id))
    try:
        publish(kafka, [raised])
        wait_for(lambda: len(receivers.to("/flaky")) >= 1, timeout=30, what="a first try")
        publish(kafka, [resolved])
        wait_for(
            lambda: [r[0] for r in rows_by_event(db).values()] == ["SENT", "SENT"],
            timeout=30,
            what="both sent",
        )
    finally:
        running.close()
    order = [orjson.loads(r.body)["event"]["transition"] for r in receivers.to("/flaky")]
    assert order == ["raised"] * 4 + ["resolved"], order


def test_an_attempt_is_bounded_as_a_whole_and_a_failures_answer_is_not_read_whole(
    stack: Settings,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    group_id: str,
    receivers: Receivers,
) -> None:
    """A receiver that sends its answer a byte a second never times out a single read; the
    attempt as a whole does, and is recorded, so the row is not resent behind its lease's
    back.  A 500 with an endless body is judged by its status and first kilobyte."""
    drip = subscribe(db, notify_id=f"{receivers.url}/drip")
    endless = subscribe(db, notify_id=f"{receivers.url}/endless500")
    settings = settings_for(stack, kafka, db, group_id)
    settings = settings.model_copy(
        update={
            "notifier": settings.notifier.model_copy(
                update={"timeout_s": 2.0, "lease_s": 3.0, "max_attempts": 2}
            )
        }
    )
    running = Running(settings)
    try:
        publish(kafka, [alert()])
        wait_for(
            lambda: {s for s, *_ in query(db, "SELECT status FROM notifications")} == {"FAILED"},
            timeout=60,
            what="both given up after two attempts",
        )
    finally:
        running.close()
    rows = {
        r[0]: r[1:]
        for r in query(db, "SELECT subscription_id, try_count, fail_reason FROM notifications")
    }
    assert rows[drip][0] == 2 and "no answer within 2s" in rows[drip][1]
    assert len(receivers.to("/drip")) == 2  # each request an attempt on record
    assert rows[endless][0] == 2 and rows[endless][1].startswith("HTTP 500: xxx")
    assert len(rows[endless][1]) < 300
