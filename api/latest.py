"""The newest status of each sensor as the worker published it, read from the latest topic.

The realtime answers are rendered from ``latest_readings``, which the latest sink fills from
the compacted latest topic.  That is two more hops (the sink's transaction, PostgreSQL's
notification) after the worker has published a status.  :class:`LatestStatuses` reads the
topic itself, from its end at start-up, and keeps the newest status per sensor: a realtime
answer shows it in place of the sensor's row when it is more recent by the sink's own rule
(``(capture_dt, updated_at)``, :func:`stream_apps.sinks.latest.rank`).

The database still decides *what* an answer holds: which sensors (a deleted sensor's row is
gone), at which location, and whether that location is active.  A status only refreshes the
values of a row that exists, at the same location; a sensor's first reading, or its first at
a new location, shows once the sink has written it.  So nothing here has to be complete: a
status missed while Kafka was unreachable is in the database a moment later, and an answer
is never older than the database's.

Values are rounded as the table's ``numeric(6, 2)`` rounds them (half away from zero), so
an answer reads the same whichever source it came from.

Kafka errors are retried with backoff.  A record that is not a status, or that fails in any
other way, is skipped, counted, logged and dead-lettered (:mod:`api.poison`): it never breaks
an answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from api.poison import PoisonRecords
from iotmon.settings import KafkaSettings
from schemas.readings import SensorStatus
from schemas.topics import topic_name

log = logging.getLogger(__name__)

_CENTS = Decimal("0.01")
# Bounds of what is held from the topic (ids are at most 64 characters; a status is about
# 400 bytes); MAX_UNREAD sensors at most wait to be decoded.
MAX_KEY_BYTES = 256
MAX_STATUS_BYTES = 16 * 1024
MAX_UNREAD = 200_000
# (key, value) or (key, value, partition, offset) of a record of the latest topic.
Record = tuple[bytes | None, bytes | None] | tuple[bytes | None, bytes | None, int, int]


def _stored(value: Decimal | None) -> Decimal | None:
    """As ``numeric(6, 2)`` stores it."""
    return None if value is None else value.quantize(_CENTS, ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class Status:
    """One sensor's status, as its ``latest_readings`` row would hold it."""

    loc_id: str
    capture_dt: datetime
    updated_at: datetime
    temperature: Decimal | None
    humidity: Decimal | None
    pcv_temperature: Decimal | None
    temperature_status: str | None
    humidity_status: str | None
    pcv_temperature_status: str | None

    @classmethod
    def of(cls, s: SensorStatus) -> Status:
        return cls(
            s.loc_id,
            s.capture_dt,
            s.updated_at,
            _stored(s.temperature),
            _stored(s.humidity),
            _stored(s.pcv_temperature),
            s.temperature_status,
            s.humidity_status,
            s.pcv_temperature_status,
        )

    @property
    def rank(self) -> tuple[datetime, datetime]:
        return (self.capture_dt, self.updated_at)


class LatestStatuses:
    """The newest status per sensor read from the latest topic since start-up.

    A record is decoded only when an answer needs its sensor: of the records of a sensor
    read between two such answers, the last one in the topic is the one used, and it
    replaces the status held before only if it is more recent.  Memory: one status per
    sensor seen (about a kilobyte), and at most ``MAX_UNREAD`` records of at most
    ``MAX_STATUS_BYTES`` waiting to be decoded.

    :attr:`version` grows with every poll that brought records, so that an answer rendered
    before it is not reused.  :attr:`reading` is true while the consumer is assigned the
    topic's partitions."""

    def __init__(
        self,
        kafka: KafkaSettings,
        client_id: str = "api-latest",
        retry_min_s: float = 0.5,
        retry_max_s: float = 10.0,
        poison: PoisonRecords | None = None,
    ) -> None:
        self.kafka = kafka
        self.topic = topic_name("latest", kafka.topic_prefix)
        self.client_id = f"{kafka.client_id}-{client_id}"
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.version = 0
        self.reading = False
        self.skipped = 0  # records that were not a status
        self.poison_fetches = 0  # fetches that failed on a record the client cannot parse
        self.poison = poison
        # sensor -> its last record not decoded yet: value, partition, offset
        self._unread: dict[str, tuple[bytes, int | None, int | None]] = {}
        self._held: dict[str, Status] = {}

    def __len__(self) -> int:
        return len(self._held.keys() | self._unread.keys())

    def apply(self, records: Sequence[Record]) -> int:
        """Take (key, value[, partition, offset]) records in topic order; returns how many
        were taken (a record without a key or a value is not)."""
        taken = 0
        unread = self._unread
        for key, value, *where in records:
            if key is None or value is None:
                continue
            partition, offset = where if where else (None, None)
            if len(key) > MAX_KEY_BYTES or len(value) > MAX_STATUS_BYTES:
                # Not a status of a sensor (ids are at most 64 characters, a status about
                # 400 bytes): never held, so that memory stays bounded.
                self._poison(key, value, partition, offset, ValueError("oversized record"))
                continue
            sensor = key.decode("utf-8", "replace")
            unread.pop(sensor, None)  # re-inserted last: the dict stays in arrival order
            unread[sensor] = (value, partition, offset)
            taken += 1
            if len(unread) > MAX_UNREAD:
                del unread[next(iter(unread))]  # the oldest; the database has that row
        if taken:
            self.version += 1
        return taken

    def _status(self, sensor_id: str) -> Status | None:
        unread = self._unread.pop(sensor_id, None)
        held = self._held.get(sensor_id)
        if unread is None:
            return held
        raw, partition, offset = unread
        try:
            record = SensorStatus.model_validate_json(raw)
            if record.sensor_id != sensor_id:
                raise ValueError(f"a status of {record.sensor_id!r} keyed {sensor_id!r}")
            status = Status.of(record)
        except Exception as exc:  # noqa: BLE001 - the boundary: one record, not the answer
            self._poison(sensor_id.encode(), raw, partition, offset, exc)
            return held
        if held is None or status.rank > held.rank:
            held = self._held[sensor_id] = status
        return held

    def _poison(
        self,
        key: bytes,
        value: bytes,
        partition: int | None,
        offset: int | None,
        exc: BaseException,
    ) -> None:
        self.skipped += 1
        if self.poison is not None:
            self.poison.report(
                "latest",
                exc,
                topic=self.topic,
                partition=partition,
                offset=offset,
                key=key,
                value=value,
            )
        else:
            log.warning("%s: skipping a record at %s: %s", self.topic, offset, exc)

    def fresher(
        self, sensor_id: str, loc_id: str, row_rank: tuple[datetime, datetime]
    ) -> Status | None:
        """The status of this sensor if it is more recent than its row (of ``row_rank``)
        and at the same location."""
        held = self._status(sensor_id)
        if held is None or held.rank <= row_rank or held.loc_id != loc_id:
            return None
        return held

    async def run(self) -> None:
        """Read the topic until cancelled, reconnecting with backoff after Kafka errors."""
        delay = self.retry_min_s
        while True:
            consumer = AIOKafkaConsumer(
                **self.kafka.aiokafka_options(),
                client_id=self.client_id,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="latest",
                request_timeout_ms=10000,
            )
            try:
                await consumer.start()
                if self.topic not in await consumer.topics():
                    log.warning("the topic %s does not exist yet; retrying", self.topic)
                else:
                    # Without a group, a subscription is assigned every partition.
                    consumer.subscribe([self.topic])
                    await self._read(consumer)
            except KafkaError as exc:
                if self.reading:
                    delay = self.retry_min_s
                log.warning("cannot read %s (%s); answers show the rows only", self.topic, exc)
            except Exception:  # the boundary of the fetch: a record the client cannot parse
                # (a header name that is not UTF-8 fails the whole fetch).  Reading starts
                # again from the topic's end, past it; the rows show meanwhile.
                self.poison_fetches += 1
                log.exception("cannot read %s; starting again from its end", self.topic)
            finally:
                self.reading = False
                await consumer.stop()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_s)

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        while not consumer.assignment():
            await asyncio.sleep(0.05)
        for tp in consumer.assignment():
            await consumer.position(tp)  # from here on, every status is read
        self.reading = True
        log.info("reading the newest statuses from %s", self.topic)
        while True:
            batches = await consumer.getmany(timeout_ms=1000, max_records=2000)
            records = [
                (m.key, m.value, m.partition, m.offset) for batch in batches.values() for m in batch
            ]
            if records:
                self.apply(records)
