"""Reading the dead-letter topic back: select, count and inspect what the stages rejected.

The topic is read by a consumer of its own, assigned without a consumer group (nothing is
committed, nothing is left behind), from the first offset a selection can match up to the
end offset captured when the read starts: dead letters written meanwhile wait for the next
run, so a read always ends.  Records are parsed with :meth:`DeadLetter.parse`, which reads
both the common format of :func:`schemas.deadletters.dead_letter` and the smaller set of
headers older records carry.

The selection, the time arguments and what a terminal is shown are plain functions here;
``iotmon dlq`` (:mod:`producers.dlq_cmd`) only calls them and prints.
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
import uuid
from collections import Counter, deque
from collections.abc import Callable, Generator, Mapping
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from iotmon.kafka_records import read_headers
from iotmon.settings import KafkaSettings
from schemas.deadletters import DeadLetter, Stage
from schemas.topics import topic_name

log = logging.getLogger(__name__)

# The longest payload shown as text, and how much of any other payload is shown in hex.
TEXT_LIMIT = 8192
HEX_LIMIT = 512


class DeadLetterError(RuntimeError):
    """The dead-letter topic (or the replay ledger) cannot be used as it is."""


@dataclass(frozen=True)
class Selection:
    """Which dead letters a command works on; an empty field selects every value.

    ``offsets`` are offsets of the dead-letter topic (it has a single partition).
    """

    reasons: frozenset[str] = frozenset()
    stages: frozenset[str] = frozenset()
    sensors: frozenset[str] = frozenset()
    offsets: frozenset[int] = frozenset()
    since: datetime | None = None

    def is_empty(self) -> bool:
        return not (self.reasons or self.stages or self.sensors or self.offsets or self.since)

    def matches(self, letter: DeadLetter) -> bool:
        if self.reasons and letter.reason not in self.reasons:
            return False
        if self.stages and stage_of(letter) not in self.stages:
            return False
        if self.sensors and letter.key not in self.sensors:
            return False
        if self.offsets and letter.offset not in self.offsets:
            return False
        return not (
            self.since is not None and (letter.timestamp is None or letter.timestamp < self.since)
        )


def stage_of(letter: DeadLetter) -> str | None:
    """The stage that wrote ``letter``; None for a record without the dead-letter headers.

    Records written before every stage set ``dlq.stage`` came from one of the two stages
    that handle gateway messages: the ingest stage, which names the raw record it rejected
    (``dlq.origin.*``), or the MQTT bridge, which has no Kafka origin.
    """
    if letter.stage:
        return letter.stage
    if letter.reason == "unknown":
        return None
    return Stage.INGEST.value if letter.origin_topic else Stage.BRIDGE.value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(
    since: str | None, last: str | None, now: datetime | None = None
) -> datetime | None:
    """The earliest time selected by ``--since`` (ISO-8601 date or time, UTC when it names
    no offset) or ``--last`` (a duration such as ``90s``, ``15m``, ``1h``, ``2d``, ``1w``),
    in UTC.

    Returns None when neither is given; ValueError when both are, one cannot be read, or
    the time it names is not in the years 1 to 9999 UTC.
    """
    if since and last:
        raise ValueError("give --since or --last, not both")
    if last:
        match = _DURATION.match(last)
        if match is None:
            raise ValueError(f"{last!r} is not a duration such as 90s, 15m, 1h, 2d or 1w")
        try:
            return (now or datetime.now(UTC)) - timedelta(
                seconds=float(match[1]) * _UNIT_SECONDS[match[2]]
            )
        except OverflowError:
            raise ValueError(f"{last!r} reaches back before the year 1") from None
    if since:
        try:
            at = datetime.fromisoformat(since.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{since!r} is not an ISO-8601 date or time") from None
        if at.tzinfo is None:
            return at.replace(tzinfo=UTC)
        try:
            return at.astimezone(UTC)
        except OverflowError:
            raise ValueError(f"{since!r} is outside the years 1 to 9999 in UTC") from None
    return None


def _consumer(kafka: KafkaSettings) -> Consumer:
    return Consumer(
        {
            **kafka.client_config(),
            "client.id": f"{kafka.client_id}-dlq",
            # Required by the client; never joined or committed: the read uses assign().
            "group.id": f"{kafka.client_id}-dlq-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            # A dead letter keeps up to 1 MiB of payload plus its headers.
            "max.partition.fetch.bytes": 4 * 1024 * 1024,
        }
    )


T = TypeVar("T")
# Errors of a partition that has no leader for the moment: just after the topic was created,
# or while a broker restarts.
_LEADERLESS = frozenset(
    {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError._TIMED_OUT}
)


def _retrying(call: Callable[[], T], timeout: float) -> T:
    """``call()``, repeated while Kafka answers that a partition has no leader, for up to
    ``timeout`` seconds; the last KafkaException after that."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            leaderless = isinstance(error, KafkaError) and (
                error.code() in _LEADERLESS or error.retriable()
            )
            if not leaderless or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _bounds(
    consumer: Consumer,
    topic: str,
    selection: Selection,
    timeout: float,
    until: Mapping[int, int] | None = None,
) -> dict[int, tuple[int, int]]:
    """For each partition with something to read: (first offset, end offset) to read."""
    meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if meta is None or meta.error is not None:
        raise DeadLetterError(f"topic {topic} is missing; run `iotmon topics create`")
    bounds: dict[int, tuple[int, int]] = {}
    for p in sorted(meta.partitions):
        watermarks = partial(
            consumer.get_watermark_offsets, TopicPartition(topic, p), timeout=timeout
        )
        low, high = _retrying(watermarks, timeout)
        if until is not None:
            high = min(high, until.get(p, low))
        if selection.offsets:
            low, high = max(low, min(selection.offsets)), min(high, max(selection.offsets) + 1)
        ms = int(selection.since.timestamp() * 1000) if selection.since is not None else -1
        # A time before the epoch selects from the start: the broker takes no negative time
        # (-1 and -2 name the end and the start, any other is refused).
        if ms >= 0 and high > low:
            by_time = partial(consumer.offsets_for_times, [TopicPartition(topic, p, ms)], timeout)
            (found,) = _retrying(by_time, timeout)
            # -1: no record at or after that time
            low = max(low, found.offset) if found.offset >= 0 else high
        if high > low:
            bounds[p] = (low, high)
    return bounds


def record_headers(msg: Message) -> list[tuple[str, bytes | None]]:
    """The headers of a consumed record; none when a name is not UTF-8 (such a record then
    reads as a dead letter of reason ``unknown``, which ``show`` still displays)."""
    headers = read_headers(msg)
    if headers is None:
        log.warning("a dead letter's headers cannot be read (a name is not UTF-8)")
        return []
    return headers


def read_dead_letters(
    kafka: KafkaSettings,
    selection: Selection | None = None,
    *,
    timeout: float = 30.0,
    until: Mapping[int, int] | None = None,
) -> Generator[DeadLetter, None, None]:
    """The dead letters that ``selection`` matches, in offset order, up to the end offset of
    the topic when the read started, or with ``until`` up to that offset (exclusive) of each
    partition it names (none of the others): a second read of the same records.

    Raises :class:`DeadLetterError` when the topic is missing, and TimeoutError when no
    record arrives for ``timeout`` seconds before the end is reached.  Close the iterator (or
    read it to the end) to release the consumer.
    """
    selection = selection or Selection()
    topic = topic_name("dead_letters", kafka.topic_prefix)
    consumer = _consumer(kafka)
    try:
        bounds = _bounds(consumer, topic, selection, timeout, until)
        if not bounds:
            return
        consumer.assign([TopicPartition(topic, p, low) for p, (low, _) in bounds.items()])
        pending = {p: high for p, (_, high) in bounds.items()}
        quiet_since = time.monotonic()
        while pending:
            messages = consumer.consume(500, 0.5)
            if messages:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > timeout:
                raise TimeoutError(f"{topic}: no record for {timeout}s before its end offset")
            for msg in messages:
                error = msg.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaException(error)
                    log.warning("%s: %s", topic, error)
                    continue
                partition, offset = msg.partition() or 0, msg.offset() or 0
                if offset >= pending.get(partition, -1):
                    continue  # written after the read started
                kind, ms = msg.timestamp()
                letter = DeadLetter.parse(
                    partition=partition,
                    offset=offset,
                    key=msg.key(),
                    value=msg.value(),
                    headers=record_headers(msg),
                    timestamp_ms=ms if kind != TIMESTAMP_NOT_AVAILABLE else None,
                )
                if selection.matches(letter):
                    yield letter
            # Positions rather than the last offset seen: they also move past offsets that
            # hold no record for the application.
            for tp in consumer.position([TopicPartition(topic, p) for p in pending]):
                if tp.offset >= pending[tp.partition]:
                    del pending[tp.partition]
    finally:
        consumer.close()


@dataclass(frozen=True)
class CountRow:
    reason: str
    stage: str | None
    count: int


def count_dead_letters(
    kafka: KafkaSettings, selection: Selection | None = None, *, timeout: float = 30.0
) -> list[CountRow]:
    """How many dead letters ``selection`` matches, by reason and stage, most first."""
    counts: Counter[tuple[str, str | None]] = Counter(
        (letter.reason, stage_of(letter))
        for letter in read_dead_letters(kafka, selection, timeout=timeout)
    )
    return [
        CountRow(reason, stage, n)
        for (reason, stage), n in sorted(
            counts.items(), key=lambda item: (-item[1], item[0][0], item[0][1] or "")
        )
    ]


@dataclass(frozen=True)
class Listing:
    """The last ``limit`` matching dead letters (in offset order) and how many matched."""

    letters: list[DeadLetter]
    matched: int


def list_dead_letters(
    kafka: KafkaSettings,
    selection: Selection | None = None,
    *,
    limit: int | None = 50,
    timeout: float = 30.0,
) -> Listing:
    """The newest ``limit`` dead letters that ``selection`` matches (all when None)."""
    kept: deque[DeadLetter] = deque(maxlen=limit)
    matched = 0
    for letter in read_dead_letters(kafka, selection, timeout=timeout):
        kept.append(letter)
        matched += 1
    return Listing(list(kept), matched)


def get_dead_letter(kafka: KafkaSettings, offset: int, *, timeout: float = 30.0) -> DeadLetter:
    """The dead letter at ``offset``; LookupError when the topic holds none there (never
    written, or removed by retention)."""
    selection = Selection(offsets=frozenset({offset}))
    with closing(read_dead_letters(kafka, selection, timeout=timeout)) as letters:
        for letter in letters:
            return letter
    raise LookupError(f"no dead letter at offset {offset}")


def summary(letter: DeadLetter, detail_width: int | None = None) -> dict[str, Any]:
    """What ``iotmon dlq list`` shows of a dead letter, as plain JSON-ready values."""
    return {
        "partition": letter.partition,
        "offset": letter.offset,
        "time": letter.timestamp.isoformat() if letter.timestamp else None,
        "stage": stage_of(letter),
        "reason": letter.reason,
        "sensor": letter.key,
        "index": letter.index,
        "detail": one_line(letter.detail, detail_width) if detail_width else letter.detail,
        "size": letter.size,
        "truncated": letter.truncated,
    }


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, keep: str = "\n\t") -> str:
    """``text`` with control and format characters (escape sequences, bidirectional
    overrides) written as ``\\xNN`` / ``\\uNNNN``, except those in ``keep``: safe for a
    terminal."""
    return "".join(
        _escape(ch) if ch not in keep and unicodedata.category(ch) in ("Cc", "Cf") else ch
        for ch in text
    )


def one_line(text: str, width: int | None = None) -> str:
    """``text`` on one printable line, cut to ``width`` characters with an ellipsis."""
    line = printable(" ".join(text.split()), keep="")
    if width is not None and len(line) > width:
        return line[: max(width - 1, 0)] + "…"
    return line


@dataclass(frozen=True)
class RenderedPayload:
    kind: str  # "text", "text (cut)" or "hex"
    body: str


def render_payload(
    payload: bytes, text_limit: int = TEXT_LIMIT, hex_limit: int = HEX_LIMIT
) -> RenderedPayload:
    """A payload as a terminal may show it: UTF-8 text (control characters escaped; the
    first ``text_limit`` characters of a longer one), or else a hex dump of the first
    ``hex_limit`` bytes.  Never returns a raw control character other than newline and tab."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        shown = payload[:hex_limit]
        lines = [
            f"{i:08x}  {shown[i : i + 16].hex(' '):<47}  "
            + "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in shown[i : i + 16])
            for i in range(0, len(shown), 16)
        ]
        if len(payload) > hex_limit:
            lines.append(f"... {len(payload) - hex_limit} more bytes")
        return RenderedPayload("hex", "\n".join(lines))
    if len(text) <= text_limit:
        return RenderedPayload("text", printable(text))
    rest = len(payload) - len(text[:text_limit].encode())
    return RenderedPayload("text (cut)", printable(text[:text_limit]) + f"\n... {rest} more bytes")
