"""Drill: a corpus of bad input, replayed at speed over real MQTT between good readings.

Each of its kinds ends in the dead-letter topic with the right reason and the original bytes,
or (a duplicate) is stored once.  The pipeline never stops, and every good reading in
between arrives in the database.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry

from iotmon.settings import BridgeSettings, DatabaseSettings, KafkaSettings, MqttSettings, Settings
from producers.bridge import Bridge, BridgeMetrics, make_client
from producers.kafka import make_producer
from producers.masterdata import import_master_data
from producers.mqtt_connect import apply_login
from producers.simulator import build_plant, master_data
from schemas.deadletters import DeadLetterHeaders
from schemas.topics import topic_name
from stream_apps.ingest.main import build as build_ingest
from stream_apps.sinks.main import build as build_sink
from stream_apps.sinks.runner import SinkMetrics
from tests.helpers import gateway_settings, headers_of, read_topic, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROUNDS = 40


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def corpus(sensor: str, now: datetime) -> list[tuple[str, bytes, str]]:
    """(topic suffix, payload, expected reason) for every kind of bad input."""
    good = {"sensor_id": sensor, "capture_dt": iso(now), "temperature": 25.0, "humidity": 50.0}

    def body(**change: object) -> bytes:
        return orjson.dumps({**good, **change})

    readings = f"sensors/{sensor}/readings"
    return [
        (readings, b'{"sensor_id": "' + sensor.encode() + b'", "temperature": 2', "malformed_json"),
        (readings, body()[:17], "malformed_json"),  # truncated
        (readings, b'{"sensor_id": "\xff\xfe", "temperature": 1}', "invalid_utf8"),
        (readings, body(temperature="warm"), "wrong_type"),
        (readings, body().replace(b"25.0", b"NaN"), "not_finite"),
        (readings, body().replace(b"50.0", b"Infinity"), "not_finite"),
        (readings, body(temperature=400.0), "out_of_range"),
        (readings, body(humidity=-5), "out_of_range"),
        (readings, body(capture_dt=iso(now + timedelta(days=1))), "future_timestamp"),
        (readings, body(capture_dt="1999-01-01T00:00:00Z"), "stale_timestamp"),
        ("sensors/TEMPIOT-NOPE/readings", body(sensor_id="TEMPIOT-NOPE"), "unknown_sensor"),
        (readings, b"", "empty_payload"),
        (readings, b"[" + b" " * (1024 * 1024 + 10) + b"]", "too_large"),
        (readings, b"42", "not_an_object"),
        (readings, body(humidity=None), "missing_field"),  # null counts as missing
        (
            readings,
            orjson.dumps({k: v for k, v in good.items() if k != "temperature"}),
            "missing_field",
        ),
        (f"sensors/{sensor}/status", body(), "wrong_topic"),
        (readings, body(sensor_id="TEMPIOT-OTHER"), "sensor_mismatch"),
    ]


def test_bad_input_corpus_at_speed(
    stack: Settings,
    kafka: KafkaSettings,
    mqtt: MqttSettings,
    db: DatabaseSettings,
    group_id: str,
) -> None:
    plant = build_plant(4, seed=5)
    import_master_data(db, kafka, master_data(plant))
    sensors = [s.sensor_id for s in plant]
    settings = stack.model_copy(
        update={
            "kafka": kafka,
            "db": db,
            "mqtt": mqtt,
            "ingest": stack.ingest.model_copy(update={"group_id": f"{group_id}-ingest"}),
            "sink": stack.sink.model_copy(update={"group_prefix": f"{group_id}-sink"}),
        }
    )
    bridge_mqtt = mqtt
    stop = threading.Event()
    bridge = Bridge(
        make_client(bridge_mqtt),
        make_producer(kafka),
        bridge_mqtt,
        BridgeSettings(),
        topic_name("readings_mqtt", kafka.topic_prefix),
        topic_name("dead_letters", kafka.topic_prefix),
        BridgeMetrics(CollectorRegistry()),
    )
    ingest = build_ingest(settings, CollectorRegistry())
    sink = build_sink(settings, "readings", SinkMetrics(CollectorRegistry()))
    threads = [
        threading.Thread(target=s.run, args=(stop,), daemon=True) for s in (bridge, ingest, sink)
    ]
    for t in threads:
        t.start()
    publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"drill-{uuid.uuid4().hex[:6]}")
    publisher.max_inflight_messages_set(1000)
    apply_login(publisher, gateway_settings(mqtt))
    publisher.connect(mqtt.host, mqtt.port)
    publisher.loop_start()
    try:
        assert bridge.subscribed.wait(10)
        now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
        expected_bad: Counter[str] = Counter()
        good: set[tuple[str, datetime]] = set()
        infos = []
        for n in range(ROUNDS):
            sensor = sensors[n % len(sensors)]
            for k, (suffix, payload, reason) in enumerate(corpus(sensor, now)):
                infos.append(publisher.publish(mqtt.topic_prefix + suffix, payload, qos=1))
                expected_bad[reason] += 1
                # A good reading after every bad one; each is unique.
                at = now + timedelta(seconds=n, milliseconds=k)
                ok = {
                    "sensor_id": sensor,
                    "capture_dt": iso(at),
                    "temperature": 21.5,
                    "humidity": 40.0,
                }
                infos.append(
                    publisher.publish(
                        f"{mqtt.topic_prefix}sensors/{sensor}/readings", orjson.dumps(ok), qos=1
                    )
                )
                good.add((sensor, at))
            # A duplicate of the round's first good reading: stored once, never a dead letter.
            infos.append(
                publisher.publish(
                    f"{mqtt.topic_prefix}sensors/{sensor}/readings",
                    orjson.dumps(
                        {
                            "sensor_id": sensor,
                            "capture_dt": iso(now + timedelta(seconds=n)),
                            "temperature": 21.5,
                            "humidity": 40.0,
                        }
                    ),
                    qos=1,
                )
            )
        deadline = time.monotonic() + 60
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            assert info.is_published()

        total_bad = sum(expected_bad.values())
        dead = read_topic(
            kafka,
            topic_name("dead_letters", kafka.topic_prefix),
            until=lambda m: len(m) >= total_bad,
            timeout=90,
        )
        reasons = Counter(headers_of(m)[DeadLetterHeaders.REASON].decode() for m in dead)
        assert reasons == expected_bad

        def stored() -> list[tuple[str, datetime]]:
            with psycopg.connect(db.url) as conn:
                conn.execute(f'SET search_path TO "{db.db_schema}"')
                return [
                    (s, c) for s, c in conn.execute("SELECT sensor_id, capture_dt FROM readings")
                ]

        wait_for(lambda: len(stored()) >= len(good), timeout=60, what="every good reading")
        rows = stored()
        assert len(rows) == len(set(rows)) == len(good)  # nothing lost, nothing twice
        assert set(rows) == good
        assert all(t.is_alive() for t in threads)  # nothing stopped on the way
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        stop.set()
        for t in threads:
            t.join(40)
        ingest.consumer.close()
        ingest.directory.close()
        sink.consumer.close()
