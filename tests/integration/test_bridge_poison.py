"""The bridge survives any single MQTT message: real Mosquitto and Kafka.

A message that cannot become a Kafka record (larger than a record may be, refused by the
producer, or refused by the broker) is dead-lettered as ``too_large`` with its first bytes,
acknowledged to MQTT (a restarted bridge does not get it again), and the messages after it
are forwarded as usual.  QoS 2, which the bridge cannot make lossless, is refused at
start-up with a clear message.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from iotmon.cli import app as cli
from iotmon.settings import BridgeSettings, KafkaSettings, MqttSettings
from producers.bridge import Bridge, BridgeConfigError, BridgeMetrics, make_client
from producers.kafka import make_producer, max_message_bytes
from schemas.deadletters import MAX_PAYLOAD_BYTES, SMALL_PAYLOAD_BYTES
from schemas.deadletters import DeadLetterHeaders as H
from schemas.topics import topic_name
from tests.helpers import headers_of, read_topic
from tests.integration.test_bridge import publish

pytestmark = pytest.mark.integration

SENSOR = "TEMPIOT-A011"
GOOD = b'{"capture_dt": "2025-09-12T05:59:38Z", "temperature": 22.1, "humidity": 77.7}'


@contextmanager
def running_bridge(
    kafka: KafkaSettings,
    mqtt: MqttSettings,
    raw_topic: str | None = None,
    limit: int = 2 * 1024 * 1024,
    **producer: Any,
) -> Iterator[tuple[Bridge, threading.Thread]]:
    b = Bridge(
        make_client(mqtt),
        make_producer(kafka, **producer),
        mqtt,
        BridgeSettings(),
        raw_topic=raw_topic or topic_name("readings_mqtt", kafka.topic_prefix),
        dead_letter_topic=topic_name("dead_letters", kafka.topic_prefix),
        metrics=BridgeMetrics(CollectorRegistry()),
        max_record_bytes=limit,
    )
    stop = threading.Event()
    thread = threading.Thread(target=b.run, args=(stop,), daemon=True)
    thread.start()
    assert b.subscribed.wait(10)
    try:
        yield b, thread
    finally:
        stop.set()
        thread.join(40)


def _dead(kafka: KafkaSettings, n: int, timeout: float = 30) -> list[Any]:
    return read_topic(
        kafka,
        topic_name("dead_letters", kafka.topic_prefix),
        until=lambda m: len(m) >= n,
        timeout=timeout,
    )


def _raw(kafka: KafkaSettings, topic: str, n: int) -> list[Any]:
    return read_topic(kafka, topic, until=lambda m: len(m) >= n, timeout=30)


def test_a_2_mb_message_is_dead_lettered_acknowledged_and_the_bridge_goes_on(
    kafka: KafkaSettings, mqtt: MqttSettings
) -> None:
    topic = f"{mqtt.topic_prefix}sensors/{SENSOR}/readings"
    huge = b"[" + b"1" * 2_096_998 + b"]"  # 2,097,000 bytes: within MQTT's, not Kafka's limit
    raw_topic = topic_name("readings_mqtt", kafka.topic_prefix)
    with running_bridge(kafka, mqtt) as (_bridge, thread):
        publish(mqtt, [(topic, huge), (topic, GOOD)])
        dead = _dead(kafka, 1)
        assert [m.value() for m in _raw(kafka, raw_topic, 1)] == [GOOD]
        assert thread.is_alive()
    assert len(dead) == 1
    headers = headers_of(dead[0])
    assert headers[H.REASON] == b"too_large"
    assert headers[H.STAGE] == b"bridge"
    assert headers[H.SIZE] == b"2097000"
    assert dead[0].value() == huge[:MAX_PAYLOAD_BYTES]  # the first bytes, cut to fit
    assert dead[0].key() == SENSOR.encode()
    assert headers["mqtt.topic"] == topic.encode()
    # It was acknowledged: the same session, started again, gets nothing more.
    with running_bridge(kafka, mqtt) as (_bridge, _thread):
        publish(mqtt, [(topic, GOOD)])
        assert len(_raw(kafka, raw_topic, 2)) == 2
    assert len(_dead(kafka, 2, timeout=3)) == 1


def test_a_message_the_producer_refuses_is_dead_lettered(
    kafka: KafkaSettings, mqtt: MqttSettings
) -> None:
    """The producer's own limit is lower than the bridge expects: produce() raises."""
    topic = f"{mqtt.topic_prefix}sensors/{SENSOR}/readings"
    big = b"[" + b"2" * 1_500_000 + b"]"
    raw_topic = topic_name("readings_mqtt", kafka.topic_prefix)
    producer = {"message.max.bytes": 1_000_000}
    with running_bridge(kafka, mqtt, None, 2 * 1024 * 1024, **producer) as (_b, thread):
        publish(mqtt, [(topic, big), (topic, GOOD)])
        dead = _dead(kafka, 1)
        assert [m.value() for m in _raw(kafka, raw_topic, 1)] == [GOOD]
        assert thread.is_alive()
    headers = headers_of(dead[0])
    assert headers[H.REASON] == b"too_large"
    assert b"MSG_SIZE_TOO_LARGE" in headers[H.DETAIL] or b"too large" in headers[H.DETAIL]
    # The same producer would refuse the whole payload as a dead letter too: its start.
    assert dead[0].value() == big[:SMALL_PAYLOAD_BYTES]
    assert headers[H.SIZE] == str(len(big)).encode()


def test_a_message_over_the_topics_own_limit_is_dead_lettered(
    kafka: KafkaSettings, mqtt: MqttSettings
) -> None:
    """The raw topic takes smaller records than the registry says: the bridge reads the
    topic's limit at start-up and dead-letters what exceeds it before producing it; a
    record the broker refuses all the same (the limit given was wrong) is dead-lettered
    from its delivery report, not retried forever."""
    small_topic = f"{kafka.topic_prefix}small-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    admin.create_topics([NewTopic(small_topic, 1, 1, config={"max.message.bytes": "100000"})])[
        small_topic
    ].result(30)
    topic = f"{mqtt.topic_prefix}sensors/{SENSOR}/readings"
    big = os.urandom(300_000)  # beyond the topic's limit even when compressed
    try:
        limit = max_message_bytes(kafka, small_topic)
        assert limit == 100_000
        with running_bridge(kafka, mqtt, raw_topic=small_topic, limit=limit) as (_b, thread):
            publish(mqtt, [(topic, big), (topic, GOOD)])
            first = _dead(kafka, 1)
            assert [m.value() for m in _raw(kafka, small_topic, 1)] == [GOOD]
            assert thread.is_alive()
        # Told a wrong limit, the bridge produces it, and the broker refuses it.
        with running_bridge(kafka, mqtt, raw_topic=small_topic) as (_b, thread):
            publish(mqtt, [(topic, big)])
            both = _dead(kafka, 2)
            publish(mqtt, [(topic, GOOD)])
            assert len(_raw(kafka, small_topic, 2)) == 2
            assert thread.is_alive()
        for dead in (first[0], both[1]):
            headers = headers_of(dead)
            assert headers[H.REASON] == b"too_large"
            assert dead.value() == big
    finally:
        admin.delete_topics([small_topic])[small_topic].result(30)


def test_qos_2_is_refused_at_start_up(
    kafka: KafkaSettings, mqtt: MqttSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    qos2 = mqtt.model_copy(update={"qos": 2})
    with pytest.raises(BridgeConfigError, match="IOTMON_MQTT__QOS=1"):
        Bridge(
            make_client(qos2),
            make_producer(kafka),
            qos2,
            BridgeSettings(),
            raw_topic="unused",
            dead_letter_topic="unused",
            metrics=BridgeMetrics(CollectorRegistry()),
        )
    monkeypatch.setenv("IOTMON_MQTT__QOS", "2")
    monkeypatch.setenv("IOTMON_BRIDGE__METRICS_PORT", "0")
    result = CliRunner().invoke(cli, ["bridge"])
    assert result.exit_code == 2
    assert "QoS 2" in result.output or "QOS=2" in result.output
