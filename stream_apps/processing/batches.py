"""The worker's outputs, written as one Kafka record batch per topic partition.

Faust's ``Topic.send`` (and a table's ``__setitem__``, which sends a changelog record) costs
a few hundred microseconds of Python per message: futures, callbacks and a trip through the
producer buffer each.  A record of the readings topic produces a message per sensor it
touches in up to four topics (state changelog, latest status, hourly aggregate, alert
event), so those per-message costs, not the computation, capped the worker at about 2,500
messages per second and queued records for seconds.

Here every output of one record goes into one aiokafka ``BatchBuilder`` per topic partition
(records keep their own keys and values, so the topics look exactly as before), handed to
the producer Faust itself uses.  Faust flushes that producer before it commits offsets, so
the guarantee stays: no offset is committed before the outputs of its record are in Kafka.
Delivery futures are kept, and the first failed delivery is raised by :meth:`check` (the
worker stops, and its records are processed again after the restart).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

Record = tuple[bytes | None, bytes | None]  # a None value: a tombstone


class BatchSender:
    """Collects records per (topic, partition) and sends each group as record batches."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer  # aiokafka.AIOKafkaProducer (Faust's)
        self._groups: dict[tuple[str, int], list[Record]] = defaultdict(list)
        self._inflight: list[asyncio.Future[Any]] = []

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> None:
        self._groups[(topic, partition)].append((key, value))

    async def send(self) -> None:
        """Queue everything added so far with the producer, a record batch at a time."""
        groups, self._groups = self._groups, defaultdict(list)
        for (topic, partition), records in groups.items():
            batch, filled = self._producer.create_batch(), 0
            for key, value in records:
                while batch.append(key=key, value=value, timestamp=None) is None:
                    if filled == 0:  # a record larger than a whole batch
                        raise ValueError(
                            f"a {len(value or b'')}-byte record for {topic} exceeds the batch size"
                        )
                    await self._queue(batch, topic, partition)
                    batch, filled = self._producer.create_batch(), 0
                filled += 1
            if filled:
                await self._queue(batch, topic, partition)
        self.check()

    async def _queue(self, batch: Any, topic: str, partition: int) -> None:
        self._inflight.append(await self._producer.send_batch(batch, topic, partition=partition))

    def check(self) -> None:
        """Forget delivered batches; raise the error of the first one Kafka refused."""
        pending = []
        for future in self._inflight:
            if not future.done():
                pending.append(future)
            elif not future.cancelled() and future.exception() is not None:
                raise RuntimeError("Kafka refused a batch of worker outputs") from (
                    future.exception()
                )
        self._inflight = pending
