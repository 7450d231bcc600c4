"""The one way this system builds a confluent-kafka producer."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource
from pydantic import BaseModel

from iotmon.settings import KafkaSettings
from schemas.deadletters import MAX_PAYLOAD_BYTES, SMALL_PAYLOAD_BYTES
from schemas.topics import TopicId, topic_name

HEADER_ROOM = 64 * 1024  # a dead letter's headers and framing, at most


# Kafka errors that say a record can never be taken, whatever the retries: too large ...
TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
# ... or refused for what it is.
RECORD_REFUSED = TOO_LARGE | {
    KafkaError.INVALID_RECORD,
    KafkaError._INVALID_ARG,
}


def error_code(exc: BaseException) -> int | None:
    """The KafkaError code a KafkaException carries (None for anything else)."""
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return error.code() if isinstance(error, KafkaError) else None


def refused_record(exc: BaseException) -> bool:
    """True for a Kafka refusal of the record itself (too large, invalid)."""
    return error_code(exc) in RECORD_REFUSED


def producer_config(settings: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """Idempotent, ``acks=all``, murmur2 partitioner (where Java clients, aiokafka and Faust
    put a key; librdkafka's default would put 3 of 4 sensor ids on another partition)."""
    config: dict[str, Any] = {
        **settings.client_config(),
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


def produce(
    producer: Producer,
    topic: str,
    value: bytes | None,
    *,
    key: bytes | None = None,
    partition: int | None = None,
    headers: list[tuple[str, bytes]] | None = None,
    on_delivery: Callable[[Any, Any], None] | None = None,
) -> None:
    """``producer.produce``, waiting for deliveries while librdkafka's queue is full
    (backpressure instead of BufferError).  A record Kafka cannot take at all (too large,
    unknown topic) raises KafkaException at once."""
    kwargs: dict[str, Any] = {"key": key, "headers": headers, "on_delivery": on_delivery}
    if partition is not None:
        kwargs["partition"] = partition
    while True:
        try:
            producer.produce(topic, value, **kwargs)
            return
        except BufferError:
            producer.poll(0.1)


def max_message_bytes(settings: KafkaSettings, topic: str, timeout: float = 10) -> int | None:
    """The broker's ``max.message.bytes`` of ``topic`` (None when it cannot be read within
    ``timeout``; a topic just created may take a moment to be known)."""
    admin = AdminClient(settings.client_config())
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    deadline = time.monotonic() + timeout
    while True:
        try:
            configs = admin.describe_configs([resource])[resource].result(timeout)
            break
        except KafkaException:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)
    entry = configs.get("max.message.bytes")
    return int(entry.value) if entry is not None and entry.value else None


def dead_letter_payload_limit(settings: KafkaSettings) -> int:
    """How much of a payload a dead letter may keep to fit the dead-letter topic as the
    broker has it configured (a deployment may have given it less than the registry's
    2 MiB): its limit less room for the headers, at least :data:`SMALL_PAYLOAD_BYTES`."""
    limit = max_message_bytes(settings, topic_name("dead_letters", settings.topic_prefix))
    if limit is None:
        return MAX_PAYLOAD_BYTES
    return max(SMALL_PAYLOAD_BYTES, min(MAX_PAYLOAD_BYTES, limit - HEADER_ROOM))


def publish_keyed(
    settings: KafkaSettings, topic: TopicId, records: Iterable[tuple[str, BaseModel]]
) -> int:
    """Produce (key, model) pairs to a registry topic as JSON and wait until Kafka confirmed
    each; returns how many were published, KafkaException if some were not confirmed."""
    producer = make_producer(settings)
    name = topic_name(topic, settings.topic_prefix)
    count = 0
    for key, record in records:
        producer.produce(name, key=key.encode(), value=record.model_dump_json().encode())
        count += 1
    remaining = producer.flush(30)
    if remaining:
        raise KafkaException(f"{remaining} records for {name} were not confirmed by Kafka")
    return count
