"""The real services of the stack answer: Kafka (two clients), Mosquitto, PostgreSQL."""

from __future__ import annotations

import asyncio
import threading

import paho.mqtt.client as mqtt_client
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Consumer, Producer

from iotmon.settings import KafkaSettings, MqttSettings
from producers.mqtt_connect import apply_login
from schemas.topics import topic_name
from tests.helpers import gateway_settings, wait_for

pytestmark = pytest.mark.integration


def test_confluent_kafka_round_trip(kafka: KafkaSettings, group_id: str) -> None:
    topic = topic_name("readings_raw", kafka.topic_prefix)
    producer = Producer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
        }
    )
    for i in range(10):
        producer.produce(topic, key=b"TEMPIOT-A011", value=f"m{i}".encode())
    assert producer.flush(10) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": group_id,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    got: list[bytes] = []
    try:
        for _ in range(60):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None and msg.value() is not None:
                got.append(msg.value() or b"")
            if len(got) == 10:
                break
    finally:
        consumer.close()
    assert got == [f"m{i}".encode() for i in range(10)]


async def test_aiokafka_round_trip(kafka: KafkaSettings, group_id: str) -> None:
    topic = topic_name("alerts", kafka.topic_prefix)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(topic, key=b"TEMPIOT-B002", value=f"a{i}".encode())
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=group_id,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    got: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            while len(got) < 5:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    got.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()
    assert got == [f"a{i}".encode() for i in range(5)]


def test_mosquitto_publish_and_receive(mqtt: MqttSettings) -> None:
    topic = f"{mqtt.topic_prefix}sensors/TEMPIOT-A011/readings"
    received: list[bytes] = []
    subscribed = threading.Event()
    done = threading.Event()

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        subscribed.set()

    def on_message(client, userdata, msg):
        received.append(msg.payload)
        if len(received) == 3:
            done.set()

    sub = mqtt_client.Client(mqtt_client.CallbackAPIVersion.VERSION2, client_id=mqtt.client_id)
    sub.on_subscribe = on_subscribe
    sub.on_message = on_message
    apply_login(sub, mqtt)
    sub.connect(mqtt.host, mqtt.port)
    sub.subscribe(f"{mqtt.topic_prefix}sensors/+/readings", qos=1)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        pub = mqtt_client.Client(mqtt_client.CallbackAPIVersion.VERSION2)
        apply_login(pub, gateway_settings(mqtt))
        pub.connect(mqtt.host, mqtt.port)
        pub.loop_start()
        for i in range(3):
            pub.publish(topic, f"p{i}".encode(), qos=1).wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        assert done.wait(10)
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert received == [b"p0", b"p1", b"p2"]


def test_a_runs_topics_all_go_with_its_prefix(kafka: KafkaSettings) -> None:
    """Tests and benchmarks delete every topic under their prefix, including those Faust
    makes for the worker (changelogs, leader topic), and never anything outside it."""
    from confluent_kafka.admin import NewTopic  # noqa: PLC0415

    from iotmon.topics import admin_client, delete_prefixed_topics  # noqa: PLC0415

    admin = admin_client(kafka)
    extra = f"{kafka.topic_prefix}worker-x-sensor-state-changelog"
    outside = f"{kafka.topic_prefix.rstrip('.')}-outside"
    for future in admin.create_topics([NewTopic(extra, 1, 1), NewTopic(outside, 1, 1)]).values():
        future.result()
    wait_for(
        lambda: {extra, outside} <= set(admin.list_topics(timeout=10).topics),
        what="the new topics in the metadata",
    )
    try:
        deleted = delete_prefixed_topics(kafka)
        assert extra in deleted
        assert topic_name("readings", kafka.topic_prefix) in deleted
        left = admin.list_topics(timeout=10).topics
        assert not [t for t in left if t.startswith(kafka.topic_prefix)]
        assert outside in left
    finally:
        admin.delete_topics([outside])
    with pytest.raises(ValueError, match="empty prefix"):
        delete_prefixed_topics(kafka.model_copy(update={"topic_prefix": ""}))
