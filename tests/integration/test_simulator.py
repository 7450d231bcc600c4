"""The simulator publishes through the real Mosquitto and Kafka, and registers its plant."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt_client
import psycopg
import pytest
import typer
from confluent_kafka import Consumer
from psycopg import sql
from typer.testing import CliRunner

from iotmon.settings import DatabaseSettings, KafkaSettings, MqttSettings
from producers.mqtt_connect import apply_login
from producers.simulate_cmd import (
    Delivery,
    KafkaPublisher,
    MqttPublisher,
    mqtt_topic,
    run_simulation,
    simulate_command,
)
from producers.simulator import Scenarios, build_plan
from schemas.topics import topic_name
from tests.helpers import gateway_settings

pytestmark = pytest.mark.integration


class Subscriber:
    """A paho subscriber on ``{prefix}sensors/+/readings`` that collects what arrives."""

    def __init__(self, settings: MqttSettings) -> None:
        self.received: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self._client = mqtt_client.Client(
            mqtt_client.CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}"
        )
        self._client.on_subscribe = lambda *args: subscribed.set()
        self._client.on_message = self._on_message
        apply_login(self._client, settings)
        self._client.connect(settings.host, settings.port)
        self._client.subscribe(f"{settings.topic_prefix}#", qos=1)
        self._client.loop_start()
        assert subscribed.wait(10), "no SUBACK"

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.received.append((msg.topic, msg.payload))

    def wait_for(self, n: int, timeout_s: float = 20) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= n:
                    break
            time.sleep(0.05)
        time.sleep(0.3)  # anything beyond n would be a bug: give it a chance to show
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def consume(kafka: KafkaSettings, topic: str, group_id: str, n: int, timeout_s: float = 30):
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: list[tuple[bytes | None, bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < n and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append((msg.key(), msg.value() or b""))
    finally:
        consumer.close()
    return got


def test_mqtt_every_published_message_arrives(mqtt: MqttSettings) -> None:
    plan = build_plan(10, start=datetime.now(UTC), interval_s=0.05, seed=11)
    subscriber = Subscriber(mqtt)
    published: list[Delivery] = []
    try:
        publisher = MqttPublisher(gateway_settings(mqtt))
        result = run_simulation(
            plan, publisher, count=200, paced=False, on_published=published.append
        )
        received = subscriber.wait_for(200)
    finally:
        subscriber.close()
    assert (result.sent, result.published, result.failed) == (200, 200, 0)
    assert len(received) == 200
    expected = Counter(
        (mqtt_topic(gateway_settings(mqtt), d.message.sensor_id), d.message.payload)
        for d in published
    )
    assert Counter(received) == expected
    doc = json.loads(received[0][1])
    assert set(doc) >= {"sensor_id", "capture_dt", "temperature", "humidity"}


def test_mqtt_batches_and_faults_arrive_as_sent(mqtt: MqttSettings) -> None:
    scenarios = Scenarios(malformed=True, malformed_fraction=0.2, original_format=True)
    plan = build_plan(5, start=datetime.now(UTC), seed=4, batch=3, scenarios=scenarios)
    subscriber = Subscriber(mqtt)
    try:
        result = run_simulation(plan, MqttPublisher(gateway_settings(mqtt)), count=60, paced=False)
        received = subscriber.wait_for(60)
    finally:
        subscriber.close()
    assert result.published == 60
    assert result.readings == 180
    assert 0 < result.malformed < 60
    assert len(received) == 60


def test_paced_run_keeps_to_the_schedule(mqtt: MqttSettings) -> None:
    # 10 sensors every 0.1 s: 100 msg/s for 1.5 s.
    plan = build_plan(10, start=datetime.now(UTC), interval_s=0.1, seed=1)
    ticks: list[float] = []
    started = time.monotonic()
    result = run_simulation(
        plan,
        MqttPublisher(gateway_settings(mqtt)),
        duration_s=1.5,
        on_tick=lambda r: ticks.append(r.elapsed_s),
    )
    wall = time.monotonic() - started
    assert result.sent == 150
    assert result.published == 150
    assert 1.4 <= wall < 5.0
    assert len(ticks) >= 20  # the progress callback runs while publishing
    # Capture times at speed 1 are wall-clock times of sending.
    assert result.sim_time is not None
    assert abs((datetime.now(UTC) - result.sim_time).total_seconds()) < 2


def test_kafka_readings_arrive_keyed_by_sensor(kafka: KafkaSettings, group_id: str) -> None:
    scenarios = Scenarios(disorder=True, malformed=True, original_format=True)
    plan = build_plan(10, start=datetime.now(UTC), interval_s=0.05, seed=5, scenarios=scenarios)
    published: list[Delivery] = []
    result = run_simulation(
        plan, KafkaPublisher(kafka), count=200, paced=False, on_published=published.append
    )
    assert (result.published, result.failed) == (200, 0)
    got = consume(kafka, topic_name("readings_raw", kafka.topic_prefix), group_id, 200)
    assert len(got) == 200
    expected = Counter((d.message.sensor_id.encode(), d.message.payload) for d in published)
    assert Counter(got) == expected


def test_command_registers_the_plant_and_records_what_it_published(
    db: DatabaseSettings,
    kafka: KafkaSettings,
    mqtt: MqttSettings,
    group_id: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IOTMON_KAFKA__TOPIC_PREFIX", kafka.topic_prefix)
    monkeypatch.setenv("IOTMON_DB__DB_SCHEMA", db.db_schema)
    monkeypatch.setenv("IOTMON_MQTT__TOPIC_PREFIX", mqtt.topic_prefix)
    app = typer.Typer()
    app.command("simulate")(simulate_command)
    record = tmp_path / "published.jsonl"
    args = ["--sensors", "5", "--count", "30", "--interval", "0.05", "--via", "kafka"]
    args += ["--seed", "3", "--malformed", "--record", str(record), "--no-progress"]
    outcome = CliRunner().invoke(app, args)
    assert outcome.exit_code == 0, outcome.output

    with psycopg.connect(db.url) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(db.db_schema)))
        rows = conn.execute("SELECT sensor_id, loc_id FROM sensors ORDER BY sensor_id").fetchall()
    assert rows[0] == ("TEMPIOT-A011", "A011")
    assert len(rows) == 5
    sensors = consume(kafka, topic_name("sensors", kafka.topic_prefix), group_id, 5)
    assert sorted(k for k, _ in sensors) == [sid.encode() for sid, _ in rows]

    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(lines) == 30
    assert {line["sensor_id"] for line in lines} == {sid for sid, _ in rows}
    assert all(line["capture_dt"].endswith("Z") for line in lines)
    assert all(isinstance(line["valid"], bool) for line in lines)
    raw = consume(kafka, topic_name("readings_raw", kafka.topic_prefix), f"{group_id}-raw", 30)
    assert len(raw) == 30
