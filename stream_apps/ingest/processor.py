"""The ingest stage: raw topic -> validated reading batches + dead letters.

One loop per process (plain confluent-kafka, no Faust: this stage does per-reading work and
must be fast).  Per poll: validate every record, group the accepted readings by the
partition their sensor id hashes to (murmur2, as every producer of this system does), and
write one :class:`ReadingBatch` record per partition (at most ``max_batch_readings`` each) and
one dead-letter record per rejection.  At most every ``commit_every_s`` (and when partitions
are revoked, and at the end) it waits until Kafka confirmed everything produced so far, and
only then commits the raw offsets of the records that produced it.  A crash therefore
re-processes, never loses; duplicates that a replay (or a gateway) causes are harmless
downstream, where a reading is identified by sensor id and capture time.

Waiting for Kafka's confirmation and committing after every poll made each poll wait two
round trips to the broker before the next, and sent the broker a commit per poll (dozens a
second at 2,000 readings/s; see docs/performance.md).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Counter

from schemas.deadletters import DeadLetterHeaders
from schemas.master import SensorRecord
from schemas.readings import (
    IngressHeaders,
    Reading,
    ReadingBatch,
    Source,
)
from stream_apps.common.directory import SensorDirectory
from stream_apps.common.offsets import PendingOffsets
from stream_apps.common.partitioning import partition_for
from stream_apps.common.polling import poll_batch
from stream_apps.ingest.validate import Accepted, Limits, Rejection, validate_payload

log = logging.getLogger(__name__)


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "iotmon_ingest_records_total", "Raw records consumed", registry=registry
        )
        self.accepted = Counter(
            "iotmon_ingest_accepted_total", "Readings accepted", ["source"], registry=registry
        )
        self.rejected = Counter(
            "iotmon_ingest_rejected_total",
            "Inputs sent to the dead-letter topic",
            ["reason"],
            registry=registry,
        )
        self.computed_pcv = Counter(
            "iotmon_ingest_pcv_computed_total",
            "Readings whose perceived temperature was computed",
            registry=registry,
        )
        self.auto_registered = Counter(
            "iotmon_ingest_sensors_registered_total",
            "Sensors registered automatically from their first reading",
            registry=registry,
        )
        self.batches = Counter(
            "iotmon_ingest_batches_total", "Reading batches written", registry=registry
        )


@dataclass(frozen=True)
class IngestTopics:
    raw: str
    readings: str
    dead_letters: str


Registrar = Callable[[str], SensorRecord]


def _header(msg: Message, name: str) -> bytes | None:
    headers = msg.headers()
    if not isinstance(headers, list):
        return None
    for key, value in headers:
        if key == name:
            return value if isinstance(value, bytes) else None
    return None


class IngestProcessor:
    def __init__(
        self,
        consumer: Consumer,
        producer: Producer,
        directory: SensorDirectory,
        limits: Limits,
        topics: IngestTopics,
        metrics: IngestMetrics,
        *,
        max_batch_readings: int = 500,
        poll_max_messages: int = 5000,
        poll_timeout_s: float = 0.1,
        poll_linger_s: float = 0.01,
        commit_every_s: float = 0.5,
        registrar: Registrar | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.directory = directory
        self.limits = limits
        self.topics = topics
        self.metrics = metrics
        self.max_batch = max_batch_readings
        self.poll_max = poll_max_messages
        self.poll_timeout = poll_timeout_s
        self.poll_linger = poll_linger_s
        self.commit_every = commit_every_s
        self.registrar = registrar
        self.clock = clock
        self.partitions = self._partition_count(topics.readings)
        self._failed: object | None = None
        # Records whose outputs are produced, not yet confirmed and committed.
        self._pending = PendingOffsets()
        consumer.subscribe([topics.raw], on_revoke=self._on_revoke)

    def _partition_count(self, topic: str) -> int:
        meta = self.producer.list_topics(topic, timeout=30).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise KafkaException(f"topic {topic} is missing; run `iotmon topics create`")
        return len(meta.partitions)

    def step(self) -> int:
        """Consume one poll's worth and produce its results; commit when due (see
        :meth:`commit`).  Returns records consumed."""
        messages = poll_batch(self.consumer, self.poll_max, self.poll_timeout, self.poll_linger)
        self.directory.refresh()
        consumed = self._process(messages) if messages else 0
        if self._pending.due(self.commit_every):
            self.commit()
        return consumed

    def _process(self, messages: list[Message]) -> int:
        batches: dict[int, list[Reading]] = defaultdict(list)
        now = self.clock()
        done: list[Message] = []
        for msg in messages:
            if msg.error() is not None:
                log.warning("raw topic: %s", msg.error())
                continue
            done.append(msg)
            self._validate(msg, now, batches)
        self.metrics.records.inc(len(done))
        for partition, readings in batches.items():
            for start in range(0, len(readings), self.max_batch):
                chunk = ReadingBatch(readings=readings[start : start + self.max_batch])
                self._produce(
                    self.topics.readings,
                    chunk.model_dump_json().encode(),
                    key=None,
                    partition=partition,
                )
                self.metrics.batches.inc()
        # Only now, with every output of the poll produced, may its offsets be committed: a
        # poll that failed half way is re-read, not half committed.
        self._pending.add(done)
        self.producer.poll(0)  # delivery reports so far; sends go out after the linger
        return len(done)

    def commit(self) -> None:
        """Wait until Kafka confirmed everything produced, then commit the offsets of the
        records consumed so far (KafkaException if Kafka refused an output: nothing is
        committed then)."""
        if self._pending:
            self._confirm()
        self._pending.commit(self.consumer, "ingest")

    def _on_revoke(self, _consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        # Before the next owner starts from the committed offsets: what was processed here
        # is not processed twice (it would be harmless, only wasted).  Not after Kafka
        # refused an output: that error has ended the loop, and nothing is committed.
        if self._failed is None:
            self.commit()

    def _validate(self, msg: Message, now: datetime, out: dict[int, list[Reading]]) -> None:
        source: Source = "mqtt" if _header(msg, IngressHeaders.SOURCE) == b"mqtt" else "kafka"
        received_raw = _header(msg, IngressHeaders.RECEIVED_AT)
        try:
            received_at = (
                datetime.fromisoformat(received_raw.decode())
                if received_raw
                else datetime.fromtimestamp(msg.timestamp()[1] / 1000, UTC)
            )
        except ValueError:
            received_at = now
        key = msg.key()
        try:
            key_sensor = key.decode() if key else None
        except UnicodeDecodeError:
            key_sensor = None
        results = validate_payload(
            msg.value(),
            key_sensor_id=key_sensor,
            lookup=self.directory.get,
            limits=self.limits,
            now=now,
            source=source,
            received_at=received_at,
        )
        for result, payload in results:
            if isinstance(result, Rejection):
                self._reject(msg, result, payload)
            else:
                self._accept(result, out)

    def _accept(self, result: Accepted, out: dict[int, list[Reading]]) -> None:
        reading = result.reading
        if (
            result.auto_registered
            and self.registrar is not None
            and self.directory.get(reading.sensor_id) is None
        ):
            self.directory.put(self.registrar(reading.sensor_id))
            self.metrics.auto_registered.inc()
        self.metrics.accepted.labels(reading.source).inc()
        if reading.pcv_computed:
            self.metrics.computed_pcv.inc()
        out[partition_for(reading.sensor_id, self.partitions)].append(reading)

    def _reject(self, msg: Message, rejection: Rejection, payload: bytes | None) -> None:
        self.metrics.rejected.labels(rejection.reason.value).inc()
        source = _header(msg, IngressHeaders.SOURCE) or b"kafka"
        headers = [
            (DeadLetterHeaders.REASON, rejection.reason.value.encode()),
            (DeadLetterHeaders.DETAIL, rejection.detail[:1000].encode()),
            (DeadLetterHeaders.SOURCE, source),
            (DeadLetterHeaders.ORIGIN_TOPIC, (msg.topic() or "").encode()),
            (DeadLetterHeaders.ORIGIN_PARTITION, str(msg.partition()).encode()),
            (DeadLetterHeaders.ORIGIN_OFFSET, str(msg.offset()).encode()),
        ]
        if rejection.index is not None:
            headers.append((DeadLetterHeaders.INDEX, str(rejection.index).encode()))
        for name in (IngressHeaders.MQTT_TOPIC, IngressHeaders.RECEIVED_AT, IngressHeaders.GATEWAY):
            value = _header(msg, name)
            if value is not None:
                headers.append((name, value))
        key = rejection.sensor_id.encode() if rejection.sensor_id else None
        self._produce(self.topics.dead_letters, payload or b"", key=key, headers=headers)

    def _produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        while True:
            try:
                if partition is None:
                    self.producer.produce(
                        topic,
                        value,
                        key=key,
                        headers=headers,  # type: ignore[arg-type]
                        on_delivery=self._on_delivery,
                    )
                else:
                    self.producer.produce(
                        topic,
                        value,
                        key=key,
                        partition=partition,
                        headers=headers,  # type: ignore[arg-type]
                        on_delivery=self._on_delivery,
                    )
                return
            except BufferError:
                self.producer.poll(0.1)

    def _on_delivery(self, err: object, _msg: Message) -> None:
        if err is not None:
            self._failed = err

    def _confirm(self) -> None:
        """Block until Kafka confirmed everything produced; never commit before that.

        A refused output is remembered for good: the offsets consumed since the last commit
        cover records whose outputs are lost, so no later commit of this processor may
        cover them either (the error ends the stage; after a restart they are read again).
        """
        while (remaining := self.producer.flush(10)) > 0:
            log.warning("waiting for Kafka to confirm %d records", remaining)
        if self._failed is not None:
            raise KafkaException(f"Kafka refused ingest output: {self._failed}")

    def run(self, stop: threading.Event) -> None:
        """Process until ``stop`` is set; KafkaException on a fatal Kafka error."""
        log.info(
            "ingest: %s -> %s (%d partitions), dead letters to %s",
            self.topics.raw,
            self.topics.readings,
            self.partitions,
            self.topics.dead_letters,
        )
        while not stop.is_set():
            self.step()
        self.commit()
