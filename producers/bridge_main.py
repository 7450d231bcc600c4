"""Composition root of the MQTT -> Kafka bridge (`iotmon bridge`)."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry

from iotmon.runtime import settle_heap
from iotmon.settings import Settings
from producers.bridge import Bridge, BridgeMetrics, make_client
from producers.kafka import make_producer, max_message_bytes, producer_config
from schemas.topics import TOPICS, topic_name

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024  # the broker's default max.message.bytes


def record_limit(settings: Settings) -> int:
    """The largest record the bridge can hand to Kafka: the raw topic's limit as the broker
    has it (the registry's when it cannot be read), and the producer's."""
    raw = topic_name("readings_mqtt", settings.kafka.topic_prefix)
    topic = max_message_bytes(settings.kafka, raw)
    if topic is None:
        topic = TOPICS["readings_mqtt"].max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES
    return min(topic, int(producer_config(settings.kafka)["message.max.bytes"]))


def build(settings: Settings, registry: CollectorRegistry) -> Bridge:
    prefix = settings.kafka.topic_prefix
    return Bridge(
        make_client(settings.mqtt),
        make_producer(settings.kafka, **{"client.id": f"{settings.kafka.client_id}-bridge"}),
        settings.mqtt,
        settings.bridge,
        raw_topic=topic_name("readings_mqtt", prefix),
        dead_letter_topic=topic_name("dead_letters", prefix),
        metrics=BridgeMetrics(registry),
        max_record_bytes=record_limit(settings),
    )


def run(settings: Settings, stop: threading.Event, registry: CollectorRegistry) -> None:
    bridge = build(settings, registry)
    settle_heap()
    bridge.run(stop)
