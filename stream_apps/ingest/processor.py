"""The ingest stage: raw topic -> validated reading batches + dead letters.

One loop per process (plain confluent-kafka, no Faust: this stage does per-reading work and
must be fast), run by :class:`~stream_apps.common.stage.StageRunner`, which also gives it the
poison-record boundary and commits offsets only after Kafka confirmed the outputs.  Per
poll it validates every record (:meth:`IngestProcessor.prepare`, pure), then
(:meth:`IngestProcessor.write`) registers new sensors if asked to, writes one dead letter per
rejection, and groups the accepted readings by the partition their sensor id hashes to
(murmur2, as every producer of this system does): one :class:`ReadingBatch` record per
partition (at most ``max_batch_readings`` each).  A crash therefore re-processes, never
loses; duplicates that a replay (or a gateway) causes are harmless downstream, where a
reading is identified by sensor id and capture time.

Waiting for Kafka's confirmation and committing after every poll made each poll wait two
round trips to the broker before the next, and sent the broker a commit per poll (dozens a
second at 2,000 readings/s; see docs/performance.md).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from confluent_kafka import Consumer, KafkaException, Message, Producer
from prometheus_client import CollectorRegistry, Counter

from schemas.deadletters import (
    MAX_PAYLOAD_BYTES,
    DeadLetterHeaders,
    DeadLetterReason,
    Stage,
    dead_letter,
    header,
)
from schemas.master import SensorRecord
from schemas.readings import IngressHeaders, Reading, ReadingBatch, Source
from stream_apps.common.directory import SensorDirectory
from stream_apps.common.partitioning import partition_for
from stream_apps.common.stage import (
    PASSTHROUGH,
    Polling,
    Prepared,
    StageMetrics,
    StageRunner,
)
from stream_apps.common.unavailable import database_unavailable, kafka_unavailable
from stream_apps.ingest.validate import Accepted, Limits, Rejection, validate_payload

log = logging.getLogger(__name__)

_PLAUSIBLE = timedelta(days=1)  # how far a reception time may be from now


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.stage = StageMetrics(registry)
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
    raw: str  # written by direct Kafka gateways: their headers are not trusted
    readings: str
    dead_letters: str
    bridged: str | None = None  # written by the bridge alone: its gateway header is trusted


Registrar = Callable[[str, str | None], SensorRecord]  # sensor id, the gateway it came from


Validated = list[tuple[Accepted | Rejection, bytes | None]]


class IngestProcessor(StageRunner[Validated]):
    stage = Stage.INGEST

    def is_transient(self, exc: BaseException) -> bool:
        # Only auto-registration does I/O besides producing: PostgreSQL, then the sensors
        # topic (KafkaException when Kafka did not confirm it).
        return database_unavailable(exc) or kafka_unavailable(exc)

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
        dead_letter_max_payload: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        super().__init__(
            consumer,
            producer,
            [topics.raw] + ([topics.bridged] if topics.bridged else []),
            topics.dead_letters,
            metrics.stage,
            Polling(poll_max_messages, poll_timeout_s, poll_linger_s, commit_every_s),
            dead_letter_max_payload,
        )
        self.directory = directory
        self.limits = limits
        self.topics = topics
        self.metrics = metrics
        self.max_batch = max_batch_readings
        self.registrar = registrar
        self.clock = clock
        self.partitions = self._partition_count(topics.readings)
        self._now = clock()

    def _partition_count(self, topic: str) -> int:
        meta = self.producer.list_topics(topic, timeout=30).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise KafkaException(f"topic {topic} is missing; run `iotmon topics create`")
        return len(meta.partitions)

    def refresh(self) -> None:
        self.directory.refresh()
        self._now = self.clock()  # one "now" per poll, as validation compares against it

    def prepare(self, msg: Message) -> Validated:
        """Every item of the record, accepted or rejected with a reason (pure)."""
        self.metrics.records.inc()
        if self.read_headers(msg) is None:
            unreadable = Rejection(
                DeadLetterReason.MALFORMED_HEADERS, "a header name is not valid UTF-8"
            )
            return [(unreadable, msg.value())]
        headers = self.headers(msg)
        # Only the bridge may write the bridged topic (Kafka ACLs), so only there does the
        # gateway header say who sent the reading.  On the raw topic anyone allowed to
        # write it could claim any gateway.
        gateway = self._gateway(msg)
        # The transport a reading came in by is kept through a replay (the raw topic's
        # header); only the gateway decides anything, and it is believed from the bridge.
        bridged = msg.topic() == self.topics.bridged
        source: Source = (
            "mqtt" if bridged or header(headers, IngressHeaders.SOURCE) == b"mqtt" else "kafka"
        )
        received_at = self._received_at(msg, header(headers, IngressHeaders.RECEIVED_AT))
        key = msg.key()
        try:
            key_sensor = key.decode() if key else None
        except UnicodeDecodeError:
            key_sensor = None
        return validate_payload(
            msg.value(),
            key_sensor_id=key_sensor,
            lookup=self.directory.get,
            limits=self.limits,
            now=self._now,
            source=source,
            received_at=received_at,
            gateway=gateway,
        )

    def _received_at(self, msg: Message, raw: bytes | None) -> datetime:
        """When the reading came in: the bridge's header, else the record's time; now when
        neither is a plausible UTC instant (within a day of now).  Normalised to UTC, so
        that every reading written can be read back (an offset such as +23:59:59.999999
        is written by pydantic as +24:00, which it cannot read)."""
        try:
            at = (
                datetime.fromisoformat(raw.decode("ascii"))
                if raw
                else datetime.fromtimestamp(msg.timestamp()[1] / 1000, UTC)
            )
            if at.tzinfo is None:
                at = at.replace(tzinfo=UTC)
            at = at.astimezone(UTC)
        except (ValueError, OverflowError, OSError):
            return self._now
        return at if abs(at - self._now) <= _PLAUSIBLE else self._now

    def write(self, items: Sequence[Prepared[Validated]]) -> None:
        """Register new sensors (if asked to), then produce the dead letters and one
        batch record per partition.  Nothing is produced before every registration
        succeeded, so a part written again after a retry produces each output once more
        at most (stored once downstream)."""
        for item in items:
            for result, _payload in item.item:
                if isinstance(result, Accepted) and result.auto_registered:
                    self._register(result.reading.sensor_id, self._gateway(item.msg))
        batches: dict[int, list[Reading]] = defaultdict(list)
        for item in items:
            for result, payload in item.item:
                if isinstance(result, Rejection):
                    self._reject(item.msg, result, payload)
                else:
                    self._accept(result, batches)
        for partition, readings in batches.items():
            for start in range(0, len(readings), self.max_batch):
                chunk = ReadingBatch(readings=readings[start : start + self.max_batch])
                self.produce(
                    self.topics.readings, chunk.model_dump_json().encode(), partition=partition
                )
                self.metrics.batches.inc()

    def _gateway(self, msg: Message) -> str | None:
        """The gateway that sent ``msg``: named by the bridge on the bridged topic only."""
        if self.topics.bridged is None or msg.topic() != self.topics.bridged:
            return None
        raw = header(self.headers(msg), IngressHeaders.GATEWAY)
        return raw.decode("utf-8", "replace") if raw is not None else None

    def _register(self, sensor_id: str, gateway: str | None) -> None:
        if self.registrar is not None and self.directory.get(sensor_id) is None:
            self.directory.put(self.registrar(sensor_id, gateway))
            self.metrics.auto_registered.inc()

    def _accept(self, result: Accepted, out: dict[int, list[Reading]]) -> None:
        reading = result.reading
        self.metrics.accepted.labels(reading.source).inc()
        if reading.pcv_computed:
            self.metrics.computed_pcv.inc()
        out[partition_for(reading.sensor_id, self.partitions)].append(reading)

    def _reject(self, msg: Message, rejection: Rejection, payload: bytes | None) -> None:
        self.metrics.rejected.labels(rejection.reason.value).inc()
        headers = self.headers(msg)
        self.send_dead_letter(
            lambda max_payload: dead_letter(
                max_payload=max_payload,
                reason=rejection.reason,
                detail=rejection.detail,
                stage=self.stage,
                payload=payload,
                key=rejection.sensor_id.encode() if rejection.sensor_id else None,
                origin_topic=msg.topic(),
                origin_partition=msg.partition(),
                origin_offset=msg.offset(),
                source=b"mqtt"
                if msg.topic() == self.topics.bridged
                else header(headers, IngressHeaders.SOURCE) or b"kafka",
                index=rejection.index,
                passthrough=[(k, v) for k, v in headers if k in PASSTHROUGH],
                replayed_from=header(headers, DeadLetterHeaders.REPLAYED_FROM),
            )
        )

    def run(self, stop: threading.Event) -> None:
        """Process until ``stop`` is set; KafkaException when Kafka refused an output."""
        log.info(
            "ingest: %s, %s -> %s (%d partitions), dead letters to %s",
            self.topics.raw,
            self.topics.bridged,
            self.topics.readings,
            self.partitions,
            self.topics.dead_letters,
        )
        super().run(stop)
