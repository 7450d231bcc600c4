"""The sensor directory: the compacted sensors topic, read into memory and kept current."""

from __future__ import annotations

import logging
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from pydantic import ValidationError

from iotmon.settings import KafkaSettings
from schemas.master import SensorRecord
from schemas.topics import topic_name

log = logging.getLogger(__name__)


class SensorDirectory:
    """Every sensor of the master-data topic by id.

    :meth:`load` reads the topic to its end once (call before serving); :meth:`refresh`
    applies what arrived since, without blocking, so changes are seen within one poll.
    """

    def __init__(self, kafka: KafkaSettings) -> None:
        self.topic = topic_name("sensors", kafka.topic_prefix)
        self._consumer = Consumer(
            {
                "bootstrap.servers": kafka.bootstrap_servers,
                "group.id": f"{kafka.client_id}-directory",  # never committed: assign() only
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        self._sensors: dict[str, SensorRecord] = {}

    def get(self, sensor_id: str) -> SensorRecord | None:
        return self._sensors.get(sensor_id)

    def put(self, record: SensorRecord) -> None:
        self._sensors[record.sensor.sensor_id] = record

    def __len__(self) -> int:
        return len(self._sensors)

    def load(self, timeout: float = 30.0) -> None:
        metadata = self._consumer.list_topics(self.topic, timeout=timeout)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            raise KafkaException(
                f"master-data topic {self.topic} is missing; run `iotmon topics create`"
            )
        parts = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in topic.partitions]
        self._consumer.assign(parts)
        ends = {
            p.partition: self._consumer.get_watermark_offsets(p, timeout=timeout)[1] for p in parts
        }
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            positions = {p.partition: p.offset for p in self._consumer.position(parts)}
            if all(positions[p] >= end or end == 0 for p, end in ends.items()):
                break
            self.refresh(0.2)
        log.info("sensor directory: %d sensors", len(self._sensors))

    def refresh(self, timeout: float = 0.0) -> int:
        """Apply pending master-data records; returns how many were applied."""
        applied = 0
        for msg in self._consumer.consume(1000, timeout):
            if msg.error() is not None:
                log.warning("master-data topic: %s", msg.error())
                continue
            key = msg.key()
            value = msg.value()
            if value is None:  # tombstone
                if key is not None:
                    self._sensors.pop(key.decode(errors="replace"), None)
                applied += 1
                continue
            try:
                record = SensorRecord.model_validate_json(value)
            except ValidationError as exc:
                log.error("master-data record at offset %d is invalid: %s", msg.offset(), exc)
                continue
            if record.deleted:
                self._sensors.pop(record.sensor.sensor_id, None)
            else:
                self._sensors[record.sensor.sensor_id] = record
            applied += 1
        return applied

    def close(self) -> None:
        self._consumer.close()
