"""Dead letters: what every stage writes when it cannot handle a record, and how it is read.

One format for every stage (bridge, ingest, worker, sinks, API readers), on one topic
(``dead_letters`` in :mod:`schemas.topics`): the record's value is the original bytes (the
first :data:`MAX_PAYLOAD_BYTES` of them when larger), its key the original key, and headers
say why, where and what.  :func:`dead_letter` builds such a record so that it always fits the
topic; :meth:`DeadLetter.parse` reads one back (``iotmon dlq``).

Two kinds of reason: bad data, named by what is wrong with it (``out_of_range``, ...), and
``internal_error``, a record some stage failed on for a reason of its own (the exception's
type is kept in ``dlq.error``).  Neither is ever retried by the pipeline: an operator looks,
fixes, and re-publishes with ``iotmon dlq replay``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel

# A dead letter must fit the topic (max.message.bytes of 2 MiB, as the raw topic): the
# payload kept, the headers (each cut to MAX_HEADER_BYTES, about a dozen of them) and the
# record overhead.  A longer payload is cut, and ``dlq.size`` says how long it was.
MAX_PAYLOAD_BYTES = 2 * 1024 * 1024 - 64 * 1024
MAX_DETAIL_CHARS = 1000
MAX_HEADER_BYTES = 1024
MAX_PASSTHROUGH_BYTES = 8 * 1024  # all the original's headers that a dead letter keeps
# What a dead letter keeps of a payload when a producer or topic takes less than the above.
SMALL_PAYLOAD_BYTES = 64 * 1024


class DeadLetterReason(StrEnum):
    """Machine-readable reasons an input was rejected; also the label of the rejection counter."""

    MALFORMED_HEADERS = "malformed_headers"
    EMPTY_PAYLOAD = "empty_payload"
    TOO_LARGE = "too_large"
    INVALID_UTF8 = "invalid_utf8"
    MALFORMED_JSON = "malformed_json"
    DUPLICATE_KEY = "duplicate_key"
    TOO_DEEP = "too_deep"
    BATCH_TOO_LONG = "batch_too_long"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    NOT_FINITE = "not_finite"
    OUT_OF_RANGE = "out_of_range"
    FUTURE_TIMESTAMP = "future_timestamp"
    STALE_TIMESTAMP = "stale_timestamp"
    UNKNOWN_SENSOR = "unknown_sensor"
    SENSOR_MISMATCH = "sensor_mismatch"
    WRONG_GATEWAY = "wrong_gateway"  # the sensor is assigned to another gateway
    WRONG_TOPIC = "wrong_topic"
    INTERNAL_ERROR = "internal_error"


class Stage(StrEnum):
    """Which consumer wrote a dead letter (a bounded metric label too)."""

    BRIDGE = "bridge"
    INGEST = "ingest"
    WORKER = "worker"
    SINK_READINGS = "sink.readings"
    SINK_AGGREGATES = "sink.aggregates"
    SINK_LATEST = "sink.latest"
    SINK_ALERTS = "sink.alerts"
    API = "api"
    NOTIFIER = "notifier"
    REPLAY = "replay"


class DeadLetterHeaders:
    """Header names of a dead-letter record.  Its value is the original bytes."""

    REASON = "dlq.reason"
    DETAIL = "dlq.detail"
    STAGE = "dlq.stage"
    ERROR = "dlq.error"  # the exception type of an internal_error
    SOURCE = "dlq.source"  # mqtt or kafka: how the reading came in
    ORIGIN_TOPIC = "dlq.origin.topic"
    ORIGIN_PARTITION = "dlq.origin.partition"
    ORIGIN_OFFSET = "dlq.origin.offset"
    INDEX = "dlq.index"  # position of the item in a batch array
    SIZE = "dlq.size"  # the original payload's length, when the value keeps only its start
    AT = "dlq.at"  # when the dead letter was written, ISO-8601 UTC
    REPLAYED_FROM = "dlq.replayed.from"  # on a re-published record: <partition>:<offset>


Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class DeadLetterRecord:
    """A dead letter ready to produce: key, value and headers, sized to fit the topic."""

    key: bytes | None
    value: bytes
    headers: Headers = field(default_factory=list)


def _cut(value: bytes, limit: int = MAX_HEADER_BYTES) -> bytes:
    return value if len(value) <= limit else value[:limit]


def dead_letter(
    *,
    reason: DeadLetterReason,
    detail: str,
    stage: Stage,
    payload: bytes | None,
    key: bytes | None = None,
    origin_topic: str | None = None,
    origin_partition: int | None = None,
    origin_offset: int | None = None,
    error: BaseException | None = None,
    source: bytes | None = None,
    index: int | None = None,
    passthrough: Iterable[tuple[str, bytes]] = (),
    now: datetime | None = None,
    max_payload: int = MAX_PAYLOAD_BYTES,
    replayed_from: bytes | None = None,
) -> DeadLetterRecord:
    """The dead letter of one record.  Never raises for any input: every text is cut to a
    bounded length and the payload to ``max_payload`` bytes (``dlq.size`` then keeps the
    original length), so the record always fits the dead-letter topic."""
    value = payload or b""
    headers: Headers = [
        (DeadLetterHeaders.REASON, reason.value.encode()),
        (DeadLetterHeaders.DETAIL, detail[:MAX_DETAIL_CHARS].encode("utf-8", "replace")),
        (DeadLetterHeaders.STAGE, stage.value.encode()),
        (DeadLetterHeaders.AT, (now or datetime.now(UTC)).isoformat().encode()),
    ]
    if error is not None:
        headers.append((DeadLetterHeaders.ERROR, _cut(type(error).__qualname__.encode())))
    if source is not None:
        headers.append((DeadLetterHeaders.SOURCE, _cut(source)))
    if origin_topic is not None:
        headers.append((DeadLetterHeaders.ORIGIN_TOPIC, _cut(origin_topic.encode())))
    if origin_partition is not None:
        headers.append((DeadLetterHeaders.ORIGIN_PARTITION, str(origin_partition).encode()))
    if origin_offset is not None:
        headers.append((DeadLetterHeaders.ORIGIN_OFFSET, str(origin_offset).encode()))
    if index is not None:
        headers.append((DeadLetterHeaders.INDEX, str(index).encode()))
    if len(value) > max_payload:
        headers.append((DeadLetterHeaders.SIZE, str(len(value)).encode()))
        value = value[:max_payload]
    if replayed_from is not None:
        headers.append((DeadLetterHeaders.REPLAYED_FROM, _cut(replayed_from)))
    # The original's own headers: the first value of each name, within a total budget (a
    # record may repeat a header thousands of times).
    seen: set[str] = set()
    budget = MAX_PASSTHROUGH_BYTES
    for name, v in passthrough:
        if name in seen or name.startswith("dlq.") or len(name) > MAX_HEADER_BYTES:
            continue
        kept = _cut(v)
        if len(name) + len(kept) > budget:
            break
        seen.add(name)
        budget -= len(name) + len(kept)
        headers.append((name, kept))
    return DeadLetterRecord(_cut(key) if key is not None else None, value, headers)


def header(headers: Sequence[tuple[str, bytes | None]] | None, name: str) -> bytes | None:
    """The first value of header ``name`` (None when absent)."""
    for key, value in headers or ():
        if key == name:
            return value
    return None


def _int(raw: bytes | None) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _text(raw: bytes | None) -> str | None:
    return raw.decode("utf-8", "replace") if raw is not None else None


class DeadLetter(BaseModel):
    """A dead-letter record as read back from the topic."""

    partition: int
    offset: int
    timestamp: datetime | None = None
    reason: str  # a DeadLetterReason, kept as text so that an unknown one still reads
    detail: str = ""
    stage: str | None = None
    error: str | None = None
    source: str | None = None
    origin_topic: str | None = None
    origin_partition: int | None = None
    origin_offset: int | None = None
    index: int | None = None
    size: int  # of the original payload
    truncated: bool = False
    key: str | None = None
    payload: bytes
    headers: dict[str, str] = {}

    @classmethod
    def parse(
        cls,
        *,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]] | None,
        timestamp_ms: int | None = None,
    ) -> DeadLetter:
        """Never raises: a record without our headers reads as reason ``unknown``, a header
        that does not hold a number where one is expected reads as absent, and a timestamp a
        datetime cannot hold (brokers accept any 64-bit value) reads as None."""
        H = DeadLetterHeaders
        payload = value or b""
        original = _int(header(headers, H.SIZE))
        return cls(
            partition=partition,
            offset=offset,
            timestamp=_timestamp(timestamp_ms),
            reason=_text(header(headers, H.REASON)) or "unknown",
            detail=_text(header(headers, H.DETAIL)) or "",
            stage=_text(header(headers, H.STAGE)),
            error=_text(header(headers, H.ERROR)),
            source=_text(header(headers, H.SOURCE)),
            origin_topic=_text(header(headers, H.ORIGIN_TOPIC)),
            origin_partition=_int(header(headers, H.ORIGIN_PARTITION)),
            origin_offset=_int(header(headers, H.ORIGIN_OFFSET)),
            index=_int(header(headers, H.INDEX)),
            size=original if original is not None else len(payload),
            truncated=original is not None and original > len(payload),
            key=_text(key),
            payload=payload,
            headers={k: _text(v) or "" for k, v in headers or ()},
        )


def _timestamp(ms: int | None) -> datetime | None:
    """A record timestamp in milliseconds as a UTC datetime; None when absent (0) or beyond
    the years 1 to 9999 (or the platform's ``time_t``)."""
    if not ms:
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        return None
