"""The one consumer loop of the ingest stage and the sinks: poll, prepare, write, commit.

A stage (:class:`StageRunner` subclass) says how to *prepare* one record (decode and
validate it: pure, per record) and how to *write* the prepared records of a poll (produce
them, or store them in one transaction).  The runner supplies everything around that, the
same way for every stage:

* **The poison-record boundary.**  Any exception while preparing a record, or while writing
  a batch that is not an infrastructure failure, is bad data that no retry will fix.  The
  record that caused it goes to the dead-letter topic (reason ``internal_error``, the
  exception type, the stage, its origin, its bytes), is counted
  (``iotmon_stage_poison_total``) and logged with its traceback, and the loop goes on.  A
  batch whose write failed is bisected until the failing record is found, so the others are
  written and only that one is dead-lettered.  Writes are idempotent, so writing a half
  twice is harmless.
* **Infrastructure failures** (:attr:`StageRunner.transient`: the database unreachable, a
  table missing, Kafka refusing) are never dead-lettered: the stage pauses its partitions,
  retries the same batch with capped exponential backoff, and resumes once the write
  succeeds.  Kafka refusing an *output* (a delivery report with an error) ends the stage
  with :class:`~confluent_kafka.KafkaException` for the supervisor to restart it: the
  offsets of the records since the last commit are then never committed.
* **Offsets are committed after the outputs.**  A record's offset is committed only once
  everything it produced (outputs and dead letters) was confirmed by Kafka and everything
  it wrote was committed to the database: at most every ``commit_every_s``, when
  partitions are revoked, and when the stage stops.  A crash re-reads, never loses.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge

from iotmon.kafka_records import Headers, read_headers
from producers.kafka import produce, refused_record
from schemas.deadletters import (
    MAX_PAYLOAD_BYTES,
    SMALL_PAYLOAD_BYTES,
    DeadLetterReason,
    DeadLetterRecord,
    Stage,
    dead_letter,
    header,
)
from schemas.readings import IngressHeaders
from stream_apps.common.offsets import PendingOffsets
from stream_apps.common.polling import poll_batch

log = logging.getLogger(__name__)

T = TypeVar("T")

# Headers of the original record that a dead letter keeps (where the reading came from).
PASSTHROUGH = (
    IngressHeaders.MQTT_TOPIC,
    IngressHeaders.RECEIVED_AT,
    IngressHeaders.GATEWAY,
    IngressHeaders.SOURCE,
)


class StageMetrics:
    """What every stage counts about its failures; one per process (one registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.poison = Counter(
            "iotmon_stage_poison_total",
            "Records a stage failed on, sent to the dead-letter topic as internal_error",
            ["stage"],
            registry=registry,
        )
        self.transient = Counter(
            "iotmon_stage_infrastructure_failures_total",
            "Failed attempts to write a batch because a service was unavailable (retried)",
            ["stage"],
            registry=registry,
        )
        self.paused = Gauge(
            "iotmon_stage_paused",
            "1 while the stage waits for a service to come back",
            ["stage"],
            registry=registry,
        )


@dataclass(frozen=True)
class Polling:
    """How a stage polls and commits (from its settings section)."""

    max_messages: int = 2000
    timeout_s: float = 0.2
    linger_s: float = 0.02
    commit_every_s: float = 0.5
    max_backoff_s: float = 5.0


@dataclass(frozen=True)
class Prepared(Generic[T]):
    """A record and what :meth:`StageRunner.prepare` made of it."""

    msg: Message
    item: T


class StageRunner(Generic[T]):
    """Base of a stage; subclasses set :attr:`stage` and :attr:`transient` and implement
    :meth:`prepare` and :meth:`write`."""

    stage: Stage
    # Exceptions that mean a service is unavailable (retry), never that a record is bad;
    # :meth:`is_transient` may look closer.
    transient: tuple[type[BaseException], ...] = ()

    def __init__(
        self,
        consumer: Consumer,
        producer: Producer,
        topics: Sequence[str],
        dead_letter_topic: str,
        metrics: StageMetrics,
        polling: Polling,
        dead_letter_max_payload: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        self.consumer = consumer
        self.dead_letter_max_payload = dead_letter_max_payload
        self._headers: dict[int, Headers | None] = {}  # of this poll's records
        self.producer = producer
        self.dead_letter_topic = dead_letter_topic
        self.stage_metrics = metrics
        self.polling = polling
        self._failed: object | None = None  # a delivery error: nothing may be committed
        self._pending = PendingOffsets()  # records done, offsets not committed yet
        consumer.subscribe(list(topics), on_revoke=self._on_revoke)

    # -- what a stage implements -------------------------------------------------------
    def refresh(self) -> None:
        """Called before every poll's records are prepared (e.g. read master data)."""

    def prepare(self, msg: Message) -> T | None:
        """What the record means; None: nothing to write.  Any exception dead-letters
        this record (it is never retried)."""
        raise NotImplementedError

    def write(self, items: Sequence[Prepared[T]]) -> None:
        """Write the prepared records of one poll (or, while a failure is bisected, a part
        of them; a part is written again after a retry: writes must be idempotent).  An
        exception of :attr:`transient` is retried; any other marks bad data."""
        raise NotImplementedError

    # -- outputs -----------------------------------------------------------------------
    def produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Hand a record to the producer; confirmed before the next offset commit."""
        produce(
            self.producer,
            topic,
            value,
            key=key,
            partition=partition,
            headers=headers,
            on_delivery=self._on_delivery,
        )

    def read_headers(self, msg: Message) -> Headers | None:
        """``msg``'s headers, None when a header name is not UTF-8 (read once per poll,
        see :mod:`iotmon.kafka_records`)."""
        key = id(msg)
        if key not in self._headers:
            self._headers[key] = read_headers(msg)
        return self._headers[key]

    def headers(self, msg: Message) -> list[tuple[str, bytes]]:
        """``msg``'s headers that have a value; none when they cannot be read."""
        return [(k, v) for k, v in self.read_headers(msg) or () if v is not None]

    def is_transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` means a service is unavailable rather than a record is bad."""
        return isinstance(exc, self.transient)

    def send_dead_letter(self, build: Callable[[int], DeadLetterRecord]) -> None:
        """Produce the dead letter ``build(max_payload)`` makes; when the producer refuses
        it as too large (its own limit is lower than the topic's), with the payload cut to
        :data:`SMALL_PAYLOAD_BYTES`."""
        limits = (self.dead_letter_max_payload, SMALL_PAYLOAD_BYTES)
        for limit in limits:
            record = build(limit)
            try:
                self.produce(
                    self.dead_letter_topic, record.value, key=record.key, headers=record.headers
                )
                return
            except KafkaException as exc:
                if limit == limits[-1] or not refused_record(exc):
                    raise

    def poison(self, msg: Message, exc: BaseException) -> None:
        """Dead-letter ``msg``, which this stage failed on with ``exc``."""
        self.stage_metrics.poison.labels(self.stage.value).inc()
        log.error(
            "%s: record %s[%s]@%s failed (%s: %s); sent to the dead-letter topic",
            self.stage.value,
            msg.topic(),
            msg.partition(),
            msg.offset(),
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        headers = self.headers(msg)
        self.send_dead_letter(
            lambda max_payload: dead_letter(
                max_payload=max_payload,
                reason=DeadLetterReason.INTERNAL_ERROR,
                detail=f"{type(exc).__name__}: {exc}",
                stage=self.stage,
                payload=msg.value(),
                key=msg.key(),
                origin_topic=msg.topic(),
                origin_partition=msg.partition(),
                origin_offset=msg.offset(),
                error=exc,
                source=header(headers, IngressHeaders.SOURCE),
                passthrough=[(name, value) for name, value in headers if name in PASSTHROUGH],
            )
        )

    def _on_delivery(self, err: object, _msg: Message) -> None:
        if err is not None:
            self._failed = err

    # -- the loop ----------------------------------------------------------------------
    def step(self, stop: threading.Event | None = None) -> int:
        """One poll: prepare, write, and commit when due.  Returns records consumed."""
        p = self.polling
        messages = poll_batch(self.consumer, p.max_messages, p.timeout_s, p.linger_s)
        self._headers.clear()
        self.refresh()
        done: list[Message] = []
        prepared: list[Prepared[T]] = []
        for msg in messages:
            if msg.error() is not None:
                log.warning("%s: %s", self.stage.value, msg.error())
                continue
            done.append(msg)
            try:
                item = self.prepare(msg)
            except Exception as exc:
                if self.is_transient(exc):
                    raise
                self.poison(msg, exc)
                continue
            if item is not None:
                prepared.append(Prepared(msg, item))
        if prepared and not self._write(prepared, stop or threading.Event()):
            return 0  # stopped while a service was down: nothing committed, re-read later
        # Only now, with every output of the poll produced or written, may its offsets be
        # committed: a poll that failed half way is re-read, not half committed.
        self._pending.add(done)
        self.producer.poll(0)  # delivery reports so far
        if self._pending.due(p.commit_every_s):
            self.commit()
        return len(done)

    def _write(self, items: list[Prepared[T]], stop: threading.Event) -> bool:
        """Write with the poison boundary, retrying while a service is down; False if
        ``stop`` was set meanwhile."""
        backoff = 0.2
        paused: list[TopicPartition] = []
        label = self.stage.value
        try:
            while True:
                try:
                    self._bisect(items)
                    return True
                except Exception as exc:
                    if not self.is_transient(exc):
                        raise  # not from a write: a bug of the stage, for the supervisor
                    self.stage_metrics.transient.labels(label).inc()
                    self.on_transient(exc)
                    if not paused:
                        paused = self.consumer.assignment()
                        self.consumer.pause(paused)
                        self.stage_metrics.paused.labels(label).set(1)
                        log.warning(
                            "%s: %s unavailable (%s); pausing and retrying",
                            label,
                            self.service_of(exc),
                            str(exc).strip() or type(exc).__name__,
                        )
                    if stop.wait(backoff):
                        return False
                    backoff = min(backoff * 2, self.polling.max_backoff_s)
        finally:
            if paused:
                self.consumer.resume(paused)
                self.stage_metrics.paused.labels(label).set(0)
                log.info("%s: resumed", label)

    def _bisect(self, items: list[Prepared[T]]) -> None:
        try:
            self.write(items)
        except Exception as exc:
            if self.is_transient(exc):
                raise
            if len(items) == 1:
                self.poison(items[0].msg, exc)
                return
            half = len(items) // 2
            self._bisect(items[:half])
            self._bisect(items[half:])

    def on_transient(self, exc: BaseException) -> None:
        """After a failed attempt (e.g. drop a broken connection)."""

    def service_of(self, exc: BaseException) -> str:
        """Which service an infrastructure failure is about (for the log)."""
        return "Kafka" if isinstance(exc, KafkaException) else "a service"

    # -- offsets -------------------------------------------------------------------------
    def commit(self) -> None:
        """Wait until Kafka confirmed everything produced, then commit the offsets of the
        records done so far (KafkaException if Kafka refused an output: nothing is
        committed then, or ever by this runner)."""
        if self._pending:
            while (remaining := self.producer.flush(10)) > 0:
                log.warning("%s: waiting for Kafka to confirm %d records", self.stage, remaining)
            if self._failed is not None:
                raise KafkaException(f"Kafka refused output of {self.stage.value}: {self._failed}")
        self._pending.commit(self.consumer, self.stage.value)

    def _on_revoke(self, _consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        # Before the next owner starts from the committed offsets.  Not after Kafka refused
        # an output: that error ends the loop, and nothing is committed.
        if self._failed is None:
            self.commit()

    def run(self, stop: threading.Event) -> None:
        """Process until ``stop`` is set, then commit; KafkaException on a refused output."""
        while not stop.is_set():
            self.step(stop)
        self.commit()
