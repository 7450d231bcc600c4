"""Small helpers for integration tests on the real services."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, Message
from prometheus_client import CollectorRegistry

from iotmon.kafka_records import read_headers
from iotmon.settings import KafkaSettings, MqttSettings
from producers.bridge import Bridge


def read_topic(
    kafka: KafkaSettings,
    topic: str,
    *,
    until: Callable[[list[Message]], bool],
    timeout: float = 30.0,
    group: str | None = None,
) -> list[Message]:
    """Read ``topic`` from the beginning until ``until(messages)`` holds (or time runs out)."""
    consumer = Consumer(
        {
            **kafka.client_config(),
            "group.id": group or f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(got):
            for msg in consumer.consume(1000, 0.3):
                if msg.error() is None:
                    got.append(msg)
    finally:
        consumer.close()
    return got


def headers_of(msg: Message) -> dict[str, bytes]:
    return {k: v for k, v in read_headers(msg) or () if v is not None}


def value_of(msg: Message) -> bytes:
    value = msg.value()
    assert isinstance(value, bytes)
    return value


def wait_for(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


TEST_GATEWAY = "test-gateway"  # an account that may write below every test's MQTT prefix


def gateway_settings(mqtt: MqttSettings, name: str = TEST_GATEWAY) -> MqttSettings:
    """``mqtt`` (a test's settings, logged in as the bridge) as gateway ``name``, whose
    password the stack's auth directory keeps (see conftest's ``stack``)."""
    assert mqtt.auth_dir is not None
    return mqtt.model_copy(
        update={
            "username": name,
            "password": None,
            "password_file": mqtt.auth_dir / "credentials" / name,
            "client_id": f"{mqtt.client_id}-{name}",
        }
    )


def mqtt_login_works(settings: MqttSettings, timeout: float = 10.0) -> None:
    """Wait until the broker accepts ``settings``' account (an added account counts from
    Mosquitto's reload, which runs after the signal that asks for it)."""
    from paho.mqtt import client as paho  # noqa: PLC0415

    from producers.mqtt_connect import apply_login  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while True:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        apply_login(client, settings)
        try:
            client.connect(settings.host, settings.port)
            client.loop_start()
            accepted = wait_connack(client)
        finally:
            client.loop_stop()
            client.disconnect()
        if accepted:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the broker never accepted account {settings.username!r}")
        time.sleep(0.1)


def wait_connack(client: object, timeout: float = 5.0) -> bool:
    """Whether ``client`` (connecting, loop started) was accepted by the broker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.is_connected():  # type: ignore[attr-defined]
            return True
        time.sleep(0.02)
    return False


def start_bridge(
    kafka: KafkaSettings, mqtt: MqttSettings, registry: CollectorRegistry | None = None
) -> tuple[Bridge, threading.Event, threading.Thread]:
    """A bridge writing to this test's topics, running in a thread and subscribed:
    (bridge, stop event, thread)."""
    from iotmon.settings import BridgeSettings  # noqa: PLC0415
    from producers.bridge import BridgeMetrics, make_client  # noqa: PLC0415
    from producers.kafka import make_producer  # noqa: PLC0415
    from schemas.topics import topic_name  # noqa: PLC0415

    bridge = Bridge(
        make_client(mqtt),
        make_producer(kafka),
        mqtt,
        BridgeSettings(),
        raw_topic=topic_name("readings_mqtt", kafka.topic_prefix),
        dead_letter_topic=topic_name("dead_letters", kafka.topic_prefix),
        metrics=BridgeMetrics(registry or CollectorRegistry()),
    )
    stop = threading.Event()
    thread = threading.Thread(target=bridge.run, args=(stop,), daemon=True)
    thread.start()
    assert bridge.subscribed.wait(15), "the bridge did not subscribe"
    return bridge, stop, thread
