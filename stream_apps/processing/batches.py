"""The worker's outputs, written as one Kafka record batch per topic partition.

Faust's ``Topic.send`` (and a table's ``__setitem__``, which sends a changelog record) costs
a few hundred microseconds of Python per message: futures, callbacks and a trip through the
producer buffer each.  A record of the readings topic produces a message per sensor it
touches in up to four topics (state changelog, latest status, hourly aggregate, alert
event), so those per-message costs, not the computation, capped the worker at about 2,500
messages per second and queued records for seconds.

Here every output of one record goes into one aiokafka ``BatchBuilder`` per topic partition
(records keep their own keys, values and headers, so the topics look exactly as before),
handed to the producer Faust itself uses.  Faust flushes that producer before it commits
offsets, so the guarantee stays: no offset is committed before the outputs of its record
are in Kafka.  A batch Kafka refuses is reported to ``on_failure`` as soon as its delivery
fails, before Faust's flush returns, so the worker stops before that commit (and its
records are processed again after the restart).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from stream_apps.processing.failures import OutputRefused

Headers = Sequence[tuple[str, bytes]]
Record = tuple[bytes | None, bytes | None, Headers | None]  # a None value: a tombstone


class BatchSender:
    """Collects records per (topic, partition) and sends each group as record batches.

    ``producer`` returns the aiokafka producer (Faust's, which exists once the app runs);
    ``on_failure`` is called with :class:`OutputRefused` when Kafka refuses a batch."""

    def __init__(
        self, producer: Callable[[], Any], on_failure: Callable[[BaseException], None]
    ) -> None:
        self._get_producer = producer
        self._producer: Any = None
        self._on_failure = on_failure
        self._groups: dict[tuple[str, int], list[Record]] = defaultdict(list)

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
    ) -> None:
        self._groups[(topic, partition)].append((key, value, headers))

    def discard(self) -> None:
        """Forget everything added since the last :meth:`send`."""
        self._groups = defaultdict(list)

    def mark(self) -> dict[tuple[str, int], int]:
        """Where the records added so far end, for :meth:`rollback`."""
        return {slot: len(records) for slot, records in self._groups.items()}

    def rollback(self, mark: dict[tuple[str, int], int]) -> None:
        """Forget the records added since ``mark`` was taken (and not sent since)."""
        for slot in list(self._groups):
            kept = mark.get(slot, 0)
            if kept:
                del self._groups[slot][kept:]
            else:
                del self._groups[slot]

    def queued(self, topic: str) -> list[tuple[int, bytes | None, bytes | None, Headers]]:
        """The records added for ``topic`` and not sent yet: partition, key, value, headers."""
        return [
            (partition, key, value, headers or ())
            for (name, partition), records in self._groups.items()
            if name == topic
            for key, value, headers in records
        ]

    async def send(self) -> None:
        """Queue everything added so far with the producer, a record batch at a time.

        A batch takes records up to the producer's batch size, and always its first one, so
        a record larger than that goes out in a batch of its own.  Raises only what the
        producer raises (infrastructure failures: aiokafka's ``KafkaError``)."""
        groups, self._groups = self._groups, defaultdict(list)
        if not groups:
            return
        producer = self._producer
        if producer is None:
            producer = self._producer = self._get_producer()
        for (topic, partition), records in groups.items():
            batch = producer.create_batch()
            for key, value, headers in records:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    await self._queue(producer, batch, topic, partition)  # full
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None, headers=headers)
            await self._queue(producer, batch, topic, partition)

    async def _queue(self, producer: Any, batch: Any, topic: str, partition: int) -> None:
        delivered: asyncio.Future[Any] = await producer.send_batch(
            batch, topic, partition=partition
        )
        delivered.add_done_callback(self._delivered)

    def _delivered(self, future: asyncio.Future[Any]) -> None:
        # Runs before Faust's flush (which waits on the batch's own future) resumes to
        # commit: this future is completed by a callback registered on the batch's future
        # before the flush's, so this callback is scheduled ahead of the flush's wake-up.
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            refused = OutputRefused(f"Kafka refused a batch of worker outputs: {error!r}")
            refused.__cause__ = error
            self._on_failure(refused)
