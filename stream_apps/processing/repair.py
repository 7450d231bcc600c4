"""Records missing from a restored state: found by their offsets, read back from Kafka.

Faust restores tables from their changelogs after a rebalance, and was seen to come back
with state older than the committed offsets (records acknowledged, their updates gone).
The partition state records the last offset applied to it and to each sensor, so such a
loss shows as a gap (:func:`stale_from`), and the missing records are re-read from Kafka
(:class:`RangeReader`) and applied again (per-sensor offsets make that idempotent).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition

from iotmon.settings import KafkaSettings
from schemas.readings import ReadingBatch
from stream_apps.processing.engine import PartitionState, SensorState
from stream_apps.processing.failures import RepairIncomplete

# Records ``start`` .. ``end - 1`` of a partition: (offset, timestamp in s, value).
ReadRange = Callable[[int, int, int], list[tuple[int, float, bytes]]]


def stale_from(
    pstate: PartitionState, states: dict[str, SensorState], batch: ReadingBatch, offset: int
) -> int | None:
    """The first offset before ``offset`` whose effect is missing from the restored states
    ``batch`` involves (or from the partition state), if any."""
    candidates = []
    if offset > pstate.last_offset + 1 and pstate.last_offset >= 0:
        candidates.append(pstate.last_offset + 1)
    involved = pstate.sensors if batch.tick_at else {r.sensor_id for r in batch.readings}
    for sid in involved:
        state = states.get(sid)
        have = state.last_offset if state else -1
        if have < pstate.sensor_offsets.get(sid, -1):
            candidates.append(have + 1)
    return min(candidates) if candidates else None


class RangeReader:
    """Reads ranges of a topic's partitions straight from Kafka (:data:`ReadRange`), with a
    consumer of its own per read that never commits."""

    def __init__(
        self, kafka: KafkaSettings, group_id: str, topic: str, timeout_s: float = 60.0
    ) -> None:
        self.kafka = kafka
        self.group_id = group_id
        self.topic = topic
        self.timeout_s = timeout_s

    def __call__(self, partition: int, start: int, end: int) -> list[tuple[int, float, bytes]]:
        """Records ``start`` .. ``end - 1`` of ``partition`` (a record without a value as
        empty bytes).  The record at ``end`` must exist (it is the one being handled).
        Records retention deleted are not there to read: reading starts at the oldest one
        kept.  :class:`RepairIncomplete` if the range could not be read to its end in
        ``timeout_s``."""
        consumer = Consumer(
            {
                **self.kafka.client_config(),
                "group.id": self.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        try:
            consumer.assign([TopicPartition(self.topic, partition, start)])
            out: list[tuple[int, float, bytes]] = []
            reached = start - 1
            deadline = time.monotonic() + self.timeout_s
            while reached < end - 1 and time.monotonic() < deadline:
                for m in consumer.consume(500, 1.0):
                    offset = m.offset()
                    if m.error() is not None or offset is None:
                        continue
                    reached = max(reached, offset)
                    if offset < end:
                        out.append((offset, m.timestamp()[1] / 1000, m.value() or b""))
            if reached < end - 1:
                raise RepairIncomplete(
                    f"{self.topic}[{partition}]: read to offset {reached} of"
                    f" {start}..{end - 1} in {self.timeout_s:.0f} s"
                )
            return out
        finally:
            consumer.close()
