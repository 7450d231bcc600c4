"""Records the API's topic readers cannot handle: counted, logged, dead-lettered once.

The API reads the latest and alerts topics without a consumer group (the realtime answers,
the live streams): it commits nothing, so a record it fails on is not lost to the pipeline
(the sinks own those topics and store or dead-letter each record themselves).  Still, one
record must never break an answer or end a stream, and an operator must be able to see it:
:class:`PoisonRecords` counts it (``iotmon_api_poison_records_total{reader}``), logs it
with its traceback, and sends it to the dead-letter topic (stage ``api``), once per record
and process however many readers and streams met it (a bounded memory of the last ones
sent).

Sending never blocks a request: the producer queues the record and delivers it in the
background; :meth:`PoisonRecords.close` waits for what is queued.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from confluent_kafka import KafkaException, Producer
from prometheus_client import CollectorRegistry, Counter

from iotmon.settings import KafkaSettings
from producers.kafka import make_producer
from schemas.deadletters import DeadLetterReason, Stage, dead_letter
from schemas.topics import topic_name

log = logging.getLogger(__name__)

REMEMBERED = 10_000  # records already dead-lettered, by position


class PoisonRecords:
    def __init__(
        self, kafka: KafkaSettings, registry: CollectorRegistry, stage: Stage = Stage.API
    ) -> None:
        self.kafka = kafka
        self.stage = stage
        self.topic = topic_name("dead_letters", kafka.topic_prefix)
        self.count = Counter(
            f"iotmon_{stage.value}_poison_records_total",
            f"Records of a topic the {stage.value} could not use (skipped, dead-lettered once)",
            ["reader"],
            registry=registry,
        )
        self._producer: Producer | None = None
        self._sent: OrderedDict[tuple[str, int, int], None] = OrderedDict()

    def report(
        self,
        reader: str,
        exc: BaseException,
        *,
        topic: str,
        partition: int | None,
        offset: int | None,
        key: bytes | None,
        value: bytes | None,
    ) -> None:
        """Count, log and (once per record) dead-letter a record ``reader`` failed on."""
        self.count.labels(reader).inc()
        log.error(
            "%s: skipping record %s[%s]@%s (%s: %s)",
            reader,
            topic,
            partition,
            offset,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        if partition is None or offset is None:
            return
        where = (topic, partition, offset)
        if where in self._sent:
            return
        self._sent[where] = None
        if len(self._sent) > REMEMBERED:
            self._sent.popitem(last=False)
        record = dead_letter(
            reason=DeadLetterReason.INTERNAL_ERROR,
            detail=f"{type(exc).__name__}: {exc}",
            stage=self.stage,
            payload=value,
            key=key,
            origin_topic=topic,
            origin_partition=partition,
            origin_offset=offset,
            error=exc,
        )
        try:
            if self._producer is None:
                self._producer = make_producer(
                    self.kafka, **{"client.id": f"{self.kafka.client_id}-{self.stage.value}"}
                )
            self._producer.produce(
                self.topic,
                record.value,
                key=record.key,
                headers=record.headers,  # type: ignore[arg-type]
            )
            self._producer.poll(0)
        except (BufferError, KafkaException) as err:
            # Kafka away or the queue full: the record stays counted and logged (and in
            # its topic, which the API never commits past).
            log.warning("%s: could not dead-letter %s[%s]@%s: %s", reader, *where, err)

    def close(self, timeout: float = 5.0) -> None:
        if self._producer is not None:
            self._producer.flush(timeout)
