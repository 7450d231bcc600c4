"""Which partition a sensor's records live on (the same for every sensor-keyed topic)."""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2


@lru_cache(maxsize=200_000)
def partition_for(sensor_id: str, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives this key, as Java clients,
    aiokafka, Faust and our confluent-kafka producers (``murmur2_random``) do."""
    return int(murmur2(sensor_id.encode()) & 0x7FFFFFFF) % partitions
