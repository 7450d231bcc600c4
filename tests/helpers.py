"""Small helpers for integration tests on the real services."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, Message

from iotmon.kafka_records import read_headers
from iotmon.settings import KafkaSettings


def read_topic(
    kafka: KafkaSettings,
    topic: str,
    *,
    until: Callable[[list[Message]], bool],
    timeout: float = 30.0,
) -> list[Message]:
    """Read ``topic`` from the beginning until ``until(messages)`` holds (or time runs out)."""
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
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
