"""Composition root of the MQTT -> Kafka bridge (`iotmon bridge`)."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry

from iotmon.runtime import settle_heap
from iotmon.settings import Settings
from producers.bridge import Bridge, BridgeMetrics, make_client
from producers.kafka import make_producer
from schemas.topics import topic_name


def build(settings: Settings, registry: CollectorRegistry) -> Bridge:
    prefix = settings.kafka.topic_prefix
    return Bridge(
        make_client(settings.mqtt),
        make_producer(settings.kafka, **{"client.id": f"{settings.kafka.client_id}-bridge"}),
        settings.mqtt,
        settings.bridge,
        raw_topic=topic_name("readings_raw", prefix),
        dead_letter_topic=topic_name("dead_letters", prefix),
        metrics=BridgeMetrics(registry),
    )


def run(settings: Settings, stop: threading.Event, registry: CollectorRegistry) -> None:
    bridge = build(settings, registry)
    settle_heap()
    bridge.run(stop)
