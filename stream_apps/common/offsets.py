"""Offsets a stage is done with, committed to Kafka now and then rather than after every poll.

The ingest stage and the sinks keep the same contract: they add a record here only once it
is done (its outputs produced, its rows written: each caller says what "done" means) and
commit at most every so often, on a revocation and when they stop.  A commit per poll made
every poll wait a round trip to the broker, and sent it dozens of commits a second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

log = logging.getLogger(__name__)


class PendingOffsets:
    """The next offset to commit per topic partition, and when the last commit was."""

    def __init__(self) -> None:
        self._next: dict[tuple[str, int], int] = {}
        self._committed_at = time.monotonic()

    def __bool__(self) -> bool:
        return bool(self._next)

    def add(self, messages: Iterable[Message]) -> None:
        """The stage is done with ``messages``."""
        for msg in messages:
            self._next[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1

    def due(self, every_s: float) -> bool:
        """Something to commit, and the last commit is at least ``every_s`` old."""
        return bool(self._next) and time.monotonic() - self._committed_at >= every_s

    def commit(self, consumer: Consumer, stage: str) -> None:
        """Commit every offset added so far, synchronously.

        A refused commit (the broker restarted or moved the group's coordinator,
        NOT_COORDINATOR, or the partitions went to another member) is logged and loses
        nothing: those records are read again, and every stage downstream stores what they
        produce once.
        """
        self._committed_at = time.monotonic()
        offsets, self._next = self._next, {}
        if not offsets:
            return
        try:
            consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
        except KafkaException as exc:
            log.warning("%s: offsets not committed (%s); they will be re-read", stage, exc)
