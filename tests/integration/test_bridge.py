"""The MQTT -> Kafka bridge against the real Mosquitto and Kafka."""

from __future__ import annotations

from collections.abc import Iterator

import paho.mqtt.client as mqtt_client
import pytest
from prometheus_client import CollectorRegistry

from iotmon.settings import KafkaSettings, MqttSettings
from producers.bridge import Bridge
from producers.mqtt_connect import apply_login
from schemas.deadletters import DeadLetterHeaders
from schemas.readings import IngressHeaders
from schemas.topics import topic_name
from tests.helpers import gateway_settings, headers_of, read_topic, start_bridge, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def bridge(kafka: KafkaSettings, mqtt: MqttSettings) -> Iterator[tuple[Bridge, CollectorRegistry]]:
    registry = CollectorRegistry()
    b, stop, thread = start_bridge(
        kafka, mqtt.model_copy(update={"extra_topics": ["gateways/{gateway}/batch"]}), registry
    )
    yield b, registry
    stop.set()
    thread.join(40)


def publish(mqtt: MqttSettings, messages: list[tuple[str, bytes]], *, retain: bool = False) -> None:
    pub = mqtt_client.Client(mqtt_client.CallbackAPIVersion.VERSION2)
    apply_login(pub, gateway_settings(mqtt))
    pub.connect(mqtt.host, mqtt.port)
    pub.loop_start()
    try:
        infos = [pub.publish(t, p, qos=1, retain=retain) for t, p in messages]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        pub.loop_stop()
        pub.disconnect()


def test_reading_arrives_on_the_raw_topic_with_key_and_headers(
    bridge: tuple[Bridge, CollectorRegistry], kafka: KafkaSettings, mqtt: MqttSettings
) -> None:
    _b, registry = bridge
    payload = (
        b'{"sensor_id": "TEMPIOT-A011", "capture_dt": "2025-09-12T05:59:38.837Z",'
        b' "temperature": 22.1, "humidity": 77.7}'
    )
    topic = f"{mqtt.topic_prefix}sensors/TEMPIOT-A011/readings"
    publish(mqtt, [(topic, payload), (f"{mqtt.topic_prefix}gateways/GW-7/batch", b"[]")])
    got = read_topic(
        kafka, topic_name("readings_mqtt", kafka.topic_prefix), until=lambda m: len(m) >= 2
    )
    assert len(got) == 2
    by_key = {m.key(): m for m in got}
    msg = by_key[b"TEMPIOT-A011"]
    assert msg.value() == payload
    headers = headers_of(msg)
    assert headers[IngressHeaders.MQTT_TOPIC] == topic.encode()
    assert headers[IngressHeaders.SOURCE] == b"mqtt"
    assert IngressHeaders.RECEIVED_AT in headers
    gateway_msg = by_key[None]
    assert headers_of(gateway_msg)[IngressHeaders.GATEWAY] == b"GW-7"
    wait_for(lambda: registry.get_sample_value("iotmon_bridge_forwarded_total") == 2.0)


def test_wrong_topic_goes_to_the_dead_letter_topic(
    bridge: tuple[Bridge, CollectorRegistry], kafka: KafkaSettings, mqtt: MqttSettings
) -> None:
    _b, registry = bridge
    wrong = f"{mqtt.topic_prefix}sensors/TEMPIOT-A011/readings/extra"
    publish(mqtt, [(wrong, b"{}")])
    got = read_topic(
        kafka, topic_name("dead_letters", kafka.topic_prefix), until=lambda m: len(m) >= 1
    )
    assert len(got) == 1
    headers = headers_of(got[0])
    assert headers[DeadLetterHeaders.REASON] == b"wrong_topic"
    assert headers[IngressHeaders.MQTT_TOPIC] == wrong.encode()
    assert got[0].value() == b"{}"
    wait_for(
        lambda: (
            registry.get_sample_value("iotmon_bridge_rejected_total", {"reason": "wrong_topic"})
            == 1.0
        )
    )


def test_a_reading_published_while_the_bridge_is_stopped_arrives_after_its_restart(
    kafka: KafkaSettings, mqtt: MqttSettings
) -> None:
    """A graceful stop (SIGTERM, a rollout) keeps the bridge's subscriptions in its
    persistent session: the broker queues what gateways publish meanwhile."""
    _b, stop, thread = start_bridge(kafka, mqtt)
    stop.set()
    thread.join(40)
    assert not thread.is_alive()
    publish(mqtt, [(f"{mqtt.topic_prefix}sensors/S-WHILE-DOWN/readings", b"while down")])
    _b2, stop2, thread2 = start_bridge(kafka, mqtt)
    try:
        got = read_topic(
            kafka,
            topic_name("readings_mqtt", kafka.topic_prefix),
            until=lambda m: any(x.key() == b"S-WHILE-DOWN" for x in m),
        )
    finally:
        stop2.set()
        thread2.join(40)
    assert [m.value() for m in got] == [b"while down"]


def test_a_retained_reading_is_forwarded_once_and_never_replayed_by_a_resubscription(
    kafka: KafkaSettings, mqtt: MqttSettings
) -> None:
    """The broker keeps retained messages (the notifier's alert states need them).  A
    gateway that sets the flag on a reading has it forwarded when it is published; every
    later subscription of the bridge (each restart subscribes again) gets the retained copy
    with the flag set, and the bridge skips it instead of taking it for a new reading."""
    raw = topic_name("readings_mqtt", kafka.topic_prefix)
    topic = f"{mqtt.topic_prefix}sensors/S-RETAINED/readings"
    registry = CollectorRegistry()
    _b, stop, thread = start_bridge(kafka, mqtt, registry)
    try:
        publish(mqtt, [(topic, b"kept by the broker")], retain=True)
        got = read_topic(kafka, raw, until=lambda m: len(m) >= 1)
        assert [m.value() for m in got] == [b"kept by the broker"]
    finally:
        stop.set()
        thread.join(40)
    restarted = CollectorRegistry()
    _b2, stop2, thread2 = start_bridge(kafka, mqtt, restarted)
    try:
        # One copy per matching subscription (the reading pattern and the watched tree).
        wait_for(
            lambda: (restarted.get_sample_value("iotmon_bridge_retained_skipped_total") or 0) >= 1,
            what="the retained copy, skipped",
        )
        publish(mqtt, [(f"{mqtt.topic_prefix}sensors/S-AFTER/readings", b"new")])
        got = read_topic(kafka, raw, until=lambda m: any(x.key() == b"S-AFTER" for x in m))
    finally:
        stop2.set()
        thread2.join(40)
        publish(mqtt, [(topic, b"")], retain=True)  # an empty retained message clears it
    # Each once; the two keys may lie in different partitions, read in either order.
    assert sorted(m.value() or b"" for m in got) == [b"kept by the broker", b"new"]
    assert restarted.get_sample_value("iotmon_bridge_forwarded_total") == 1.0
