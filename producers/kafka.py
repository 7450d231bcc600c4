"""The one way this system builds a confluent-kafka producer."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Producer

from iotmon.settings import KafkaSettings


def producer_config(settings: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """Idempotent, ``acks=all``, murmur2 partitioner (where Java clients, aiokafka and Faust
    put a key; librdkafka's default would put 3 of 4 sensor ids on another partition)."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": settings.client_id,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "compression.type": "lz4",
        "message.max.bytes": 2 * 1024 * 1024,
    }
    config.update(overrides)
    return config


def make_producer(settings: KafkaSettings, **overrides: Any) -> Producer:
    return Producer(producer_config(settings, **overrides))
