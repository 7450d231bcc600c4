"""Compacted master-data topics read into memory and kept current (sensors, thresholds)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from pydantic import BaseModel, ValidationError

from iotmon.settings import KafkaSettings
from schemas.master import SensorRecord
from schemas.thresholds import Threshold, ThresholdRecord
from schemas.topics import TopicId, topic_name

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class CompactedView(Generic[M]):
    """The current value of every key of a compacted topic.

    :meth:`load` reads the topic to its end once (call before serving: "not loaded yet" must
    never pass for "empty"); :meth:`refresh` applies what arrived since without blocking, so
    changes are seen within one poll.  A tombstone or a record whose ``deleted`` is true
    removes the key.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: TopicId,
        model: type[M],
        key_of: Callable[[M], str],
        is_deleted: Callable[[M], bool],
    ) -> None:
        self.topic = topic_name(topic, kafka.topic_prefix)
        self._model = model
        self._key_of = key_of
        self._is_deleted = is_deleted
        self._consumer = Consumer(
            {
                **kafka.client_config(),
                "group.id": f"{kafka.client_id}-view",  # never committed: assign() only
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        self._items: dict[str, M] = {}
        self.loaded = False
        self.version = 0  # bumped on every applied change

    def get(self, key: str) -> M | None:
        return self._items.get(key)

    def put(self, item: M) -> None:
        self._items[self._key_of(item)] = item
        self.version += 1

    def values(self) -> list[M]:
        return list(self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def load(self, timeout: float = 30.0) -> None:
        """Read the topic to its end; KafkaException if it is missing or unreachable."""
        metadata = self._consumer.list_topics(self.topic, timeout=timeout)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            raise KafkaException(f"topic {self.topic} is missing; run `iotmon topics create`")
        parts = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in topic.partitions]
        self._consumer.assign(parts)
        ends = {
            p.partition: self._consumer.get_watermark_offsets(p, timeout=timeout)[1] for p in parts
        }
        deadline = time.monotonic() + timeout
        while True:
            positions = {p.partition: p.offset for p in self._consumer.position(parts)}
            if all(end == 0 or positions[p] >= end for p, end in ends.items()):
                break
            if time.monotonic() > deadline:
                raise KafkaException(f"could not read {self.topic} to its end in {timeout}s")
            self.refresh(0.2)
        self.loaded = True
        log.info("%s: %d current records", self.topic, len(self._items))

    def refresh(self, timeout: float = 0.0) -> int:
        """Apply pending records; returns how many were applied."""
        applied = 0
        for msg in self._consumer.consume(1000, timeout):
            if msg.error() is not None:
                log.warning("%s: %s", self.topic, msg.error())
                continue
            key = msg.key()
            value = msg.value()
            if value is None:  # tombstone
                if key is not None:
                    self._items.pop(key.decode(errors="replace"), None)
                    applied += 1
                continue
            try:
                item = self._model.model_validate_json(value)
            except ValidationError as exc:
                log.error("%s: record at offset %d is invalid: %s", self.topic, msg.offset(), exc)
                continue
            if self._is_deleted(item):
                self._items.pop(self._key_of(item), None)
            else:
                self._items[self._key_of(item)] = item
            applied += 1
        if applied:
            self.version += 1
        return applied

    def close(self) -> None:
        self._consumer.close()


class SensorDirectory(CompactedView[SensorRecord]):
    """Every registered sensor with its location, by sensor id."""

    def __init__(self, kafka: KafkaSettings) -> None:
        super().__init__(
            kafka, "sensors", SensorRecord, lambda r: r.sensor.sensor_id, lambda r: r.deleted
        )


class ThresholdDirectory(CompactedView[ThresholdRecord]):
    """Every threshold band, by threshold id."""

    def __init__(self, kafka: KafkaSettings) -> None:
        super().__init__(
            kafka,
            "thresholds",
            ThresholdRecord,
            lambda r: str(r.threshold.threshold_id),
            lambda r: r.deleted,
        )

    def thresholds(self) -> list[Threshold]:
        return [r.threshold for r in self.values()]
