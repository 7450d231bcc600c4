"""A typed producer for gateways that publish straight to Kafka instead of MQTT.

Readings go to the raw topic, keyed by sensor id, with the same payload as over MQTT, and are
validated downstream exactly like bridged ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from iotmon.settings import KafkaSettings
from producers.kafka import make_producer
from schemas.readings import IngressHeaders, ReadingPayload
from schemas.topics import topic_name


class GatewayProducer:
    """Use as a context manager, or call :meth:`flush` before exiting."""

    def __init__(self, kafka: KafkaSettings, gateway: str | None = None) -> None:
        self._producer = make_producer(kafka)
        self._topic = topic_name("readings_raw", kafka.topic_prefix)
        self._headers: list[tuple[str, bytes]] = [(IngressHeaders.SOURCE, b"kafka")]
        if gateway:
            self._headers.append((IngressHeaders.GATEWAY, gateway.encode()))

    def send(self, reading: ReadingPayload | Mapping[str, Any]) -> None:
        """Queue one reading (a model or a wire-format mapping)."""
        if isinstance(reading, ReadingPayload):
            doc: Mapping[str, Any] = reading.model_dump(mode="json", exclude_none=True)
        else:
            doc = reading
        self.send_raw(str(doc["sensor_id"]), orjson.dumps(doc))

    def send_batch(self, sensor_id: str, readings: Iterable[Mapping[str, Any]]) -> None:
        """Queue readings of one sensor as one JSON array record."""
        self.send_raw(sensor_id, orjson.dumps(list(readings)))

    def send_raw(self, sensor_id: str | None, payload: bytes) -> None:
        """Queue bytes as they are (validation happens downstream)."""
        while True:
            try:
                self._producer.produce(
                    self._topic,
                    payload,
                    key=sensor_id.encode() if sensor_id else None,
                    headers=self._headers,  # type: ignore[arg-type]
                )
                return
            except BufferError:
                self._producer.poll(0.1)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until Kafka confirmed every queued reading; RuntimeError if it did not."""
        remaining = self._producer.flush(timeout)
        if remaining:
            raise RuntimeError(f"{remaining} readings not confirmed by Kafka within {timeout}s")

    def __enter__(self) -> GatewayProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
