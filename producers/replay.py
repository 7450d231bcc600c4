"""Re-publishing dead letters into the raw readings topic (``iotmon dlq replay``).

Once an operator has fixed what made a stage reject a record (registered the sensor,
corrected a limit), the record can go through the pipeline again: its payload is produced
to the raw readings topic with its original key and the headers the bridge set on it
(``mqtt.topic``, ``received_at``, ``gateway``, ``source``), plus ``dlq.replayed.from`` =
``<partition>:<offset>`` of the dead letter.  The ingest stage then validates it like any
other record; one that is still bad becomes a new dead letter.

Only a dead letter whose value is a whole gateway message can be replayed: not one whose
payload was cut (``dlq.size`` larger than the value), and not one written by a stage whose
input is not a gateway message (the worker, the sinks, the API).  An item of a batch array
(``dlq.index``) is its own JSON object and is replayed as a single reading.

One copy per original record: the topic may hold several dead letters of the same record
(a stage that re-read it after a crash, or retried it, rejected it again at a new offset),
and a replay publishes only the newest of them; the others are skipped as duplicates.  The
selection is therefore read twice: once to find the newest dead letter of each record, once
more (up to the same end offset) to publish.

Safe to run twice: every dead letter re-published is recorded in the ``dead_letter_replays``
table once Kafka has confirmed its copy, and a later replay skips it unless forced.  A copy
the ingest stage rejects again becomes a new dead letter that names its source
(``dlq.replayed.from``); a later replay leaves it out too, unless forced, when its source
is recorded.  A crash between the confirmation and the record re-publishes at most those
records once more, which is harmless: downstream a reading is identified by its sensor id
and capture time and stored once.  One replay of a deployment runs at a time (a PostgreSQL
advisory lock): a second one started meanwhile stops with :class:`DeadLetterError`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from confluent_kafka import KafkaError, Message
from psycopg import sql

from iotmon.settings import DatabaseSettings, KafkaSettings
from producers.deadletters import DeadLetterError, Selection, read_dead_letters, stage_of
from producers.kafka import make_producer, produce
from schemas.deadletters import DeadLetter, DeadLetterHeaders, Headers, Stage
from schemas.readings import IngressHeaders
from schemas.topics import topic_name

log = logging.getLogger(__name__)

# The stages whose input is a gateway message: what they reject can be fed in again.
RAW_STAGES = frozenset({Stage.BRIDGE.value, Stage.INGEST.value})
PASSTHROUGH = (
    IngressHeaders.MQTT_TOPIC,
    IngressHeaders.RECEIVED_AT,
    IngressHeaders.GATEWAY,
    IngressHeaders.SOURCE,
)
# Dead letters published and recorded together: bounds the memory a large replay takes and
# how much a crash can make the next run re-publish.
CHUNK = 500

LetterId = tuple[int, int]  # (partition, offset) on the dead-letter topic
# What names the record a dead letter holds: ("record", topic, partition, offset, index) of
# the original, or ("dead letter", partition, offset) of a dead letter that has no origin.
Original = tuple[object, ...]


@dataclass(frozen=True)
class Outcome:
    """What happened to one dead letter: ``note`` is where its copy went, when it was
    replayed before, or why it cannot be replayed."""

    partition: int
    offset: int
    reason: str
    stage: str | None
    sensor: str | None
    note: str = ""

    @classmethod
    def of(cls, letter: DeadLetter, note: str = "") -> Outcome:
        return cls(
            letter.partition, letter.offset, letter.reason, stage_of(letter), letter.key, note
        )


@dataclass
class ReplayReport:
    dry_run: bool
    replayed: list[Outcome] = field(default_factory=list)  # would be, when dry_run
    already: list[Outcome] = field(default_factory=list)
    again: list[Outcome] = field(default_factory=list)  # rejected again after a replay
    skipped: list[Outcome] = field(default_factory=list)
    failed: list[Outcome] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)  # offsets selected that hold no record


def refusal(letter: DeadLetter) -> str | None:
    """Why ``letter`` cannot be replayed, or None when it can."""
    stage = stage_of(letter)
    if stage is None:
        return "not a dead letter of this system (no dlq.reason header)"
    if stage not in RAW_STAGES:
        return f"written by stage {stage}: its payload is not a gateway message"
    if letter.truncated:
        return f"payload cut: {len(letter.payload)} of {letter.size} bytes kept"
    if not letter.payload:
        return "empty payload: nothing to re-publish"
    return None


@dataclass(frozen=True)
class ReplayMessage:
    key: bytes | None
    value: bytes
    headers: Headers


def replay_message(letter: DeadLetter) -> ReplayMessage:
    """The raw record that re-publishes ``letter``: its payload and key, the bridge's
    headers it kept, and where it came from."""
    headers: Headers = [
        (name, letter.headers[name].encode()) for name in PASSTHROUGH if name in letter.headers
    ]
    if IngressHeaders.SOURCE not in letter.headers and letter.source:
        # Records written before the stages passed ``source`` through kept it as dlq.source.
        headers.append((IngressHeaders.SOURCE, letter.source.encode()))
    headers.append(
        (DeadLetterHeaders.REPLAYED_FROM, f"{letter.partition}:{letter.offset}".encode())
    )
    key = letter.key.encode() if letter.key is not None else None
    return ReplayMessage(key, letter.payload, headers)


_REPLAYED_FROM = re.compile(r"(\d{1,10}):(\d{1,19})", re.ASCII)


def replayed_from(letter: DeadLetter) -> LetterId | None:
    """The dead letter whose replayed copy ``letter`` rejected (its ``dlq.replayed.from``
    header); None when it has none, or one that does not read ``<partition>:<offset>`` of a
    dead letter written before ``letter`` (the topic has one partition)."""
    match = _REPLAYED_FROM.fullmatch(letter.headers.get(DeadLetterHeaders.REPLAYED_FROM, ""))
    if match is None:
        return None
    source = (int(match[1]), int(match[2]))
    return source if source[0] == letter.partition and source[1] < letter.offset else None


class Originals:
    """Which dead letters of one replay hold the same original record, and the newest of each.

    A dead letter's original is the record its ``dlq.origin.*`` headers and ``dlq.index``
    name; that of a dead letter of a replayed copy (``dlq.replayed.from``) is the original
    of the dead letter it was replayed from; a dead letter without either (the bridge's) is
    its own.  Only dead letters that can be replayed take part: one that cannot must not
    hide an older one that can.
    """

    def __init__(self) -> None:
        self._of: dict[LetterId, Original] = {}
        self._newest: dict[Original, LetterId] = {}

    @classmethod
    def of(cls, letters: Iterable[DeadLetter]) -> Originals:
        originals = cls()
        for letter in letters:
            originals.add(letter)
        return originals

    def add(self, letter: DeadLetter) -> None:
        """Take ``letter`` into account.  Call in the order the dead letters were written
        (offset order): the last one added of an original is its newest."""
        if refusal(letter) is not None:
            return
        letter_id = (letter.partition, letter.offset)
        self._of[letter_id] = original = self._original(letter)
        self._newest[original] = letter_id

    def newest(self, letter: DeadLetter) -> LetterId:
        """The newest dead letter added that holds ``letter``'s original; ``letter``'s own
        id when that is ``letter`` or it was not added."""
        letter_id = (letter.partition, letter.offset)
        original = self._of.get(letter_id)
        return letter_id if original is None else self._newest[original]

    def _original(self, letter: DeadLetter) -> Original:
        source = replayed_from(letter)
        if source is not None:
            # The source was written first, so it was added first when it was selected.
            return self._of.get(source, ("dead letter", *source))
        if (
            letter.origin_topic is not None
            and letter.origin_partition is not None
            and letter.origin_offset is not None
        ):
            return (
                "record",
                letter.origin_topic,
                letter.origin_partition,
                letter.origin_offset,
                letter.index,
            )
        return ("dead letter", letter.partition, letter.offset)


@dataclass
class Plan:
    todo: list[DeadLetter] = field(default_factory=list)
    already: list[Outcome] = field(default_factory=list)
    again: list[Outcome] = field(default_factory=list)
    skipped: list[Outcome] = field(default_factory=list)


def plan(
    letters: Iterable[DeadLetter],
    previous: Mapping[LetterId, datetime],
    *,
    replayed: Collection[LetterId] = (),
    originals: Originals | None = None,
    force: bool = False,
) -> Plan:
    """Split ``letters`` into what to publish and what not, and why.

    Skipped: what :func:`refusal` refuses, and every dead letter that is not the newest of
    its original record in ``originals`` ("duplicate of offset N"; by default the newest
    among ``letters``).  Already replayed: a dead letter replayed before (``previous``: when
    each was last replayed).  Rejected again: a dead letter of a replayed copy whose source
    dead letter was replayed (is in ``replayed``).  ``force`` publishes the last two kinds
    too, never the skipped ones: one copy per original record.
    """
    letters = list(letters)
    if originals is None:
        originals = Originals.of(letters)
    result = Plan()
    for letter in letters:
        why = refusal(letter)
        newest = originals.newest(letter)
        when = previous.get((letter.partition, letter.offset))
        source = replayed_from(letter)
        if why is not None:
            result.skipped.append(Outcome.of(letter, why))
        elif newest != (letter.partition, letter.offset):
            result.skipped.append(Outcome.of(letter, f"duplicate of offset {newest[1]}"))
        elif force:
            result.todo.append(letter)
        elif when is not None:
            result.already.append(Outcome.of(letter, f"replayed at {when.isoformat()}"))
        elif source is not None and source in replayed:
            note = f"rejected again after replay of offset {source[1]}"
            result.again.append(Outcome.of(letter, note))
        else:
            result.todo.append(letter)
    return result


def _connect(db: DatabaseSettings) -> psycopg.Connection[tuple[Any, ...]]:
    conn = psycopg.connect(db.url, autocommit=True)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(db.db_schema)))
    return conn


def _ledger(
    conn: psycopg.Connection[Any], topic: str, offsets: Iterable[int]
) -> list[tuple[Any, ...]]:
    """(partition, offset, written_at, last_replayed_at) of the ledger rows at ``offsets``."""
    try:
        return conn.execute(
            "SELECT dlq_partition, dlq_offset, written_at, last_replayed_at"
            " FROM dead_letter_replays WHERE topic = %s AND dlq_offset = ANY(%s)",
            (topic, sorted(set(offsets))),
        ).fetchall()
    except psycopg.errors.UndefinedTable as exc:
        raise DeadLetterError("the replay ledger is missing; run `iotmon migrate`") from exc


def previous_replays(
    conn: psycopg.Connection[Any], topic: str, letters: Iterable[DeadLetter]
) -> dict[LetterId, datetime]:
    """When each of ``letters`` was last replayed (absent: never).  A row for the same
    offset of an earlier record (the topic was deleted and created again) does not count."""
    wanted = {(x.partition, x.offset): x.timestamp for x in letters}
    if not wanted:
        return {}
    rows = _ledger(conn, topic, (offset for _, offset in wanted))
    return {
        (p, o): last for p, o, written, last in rows if (p, o) in wanted and wanted[p, o] == written
    }


def replayed_sources(
    conn: psycopg.Connection[Any], topic: str, letters: Iterable[DeadLetter]
) -> set[LetterId]:
    """The dead letters that ``letters`` name in ``dlq.replayed.from`` and that the ledger
    records as replayed.  Their timestamps are not known here, so a row is taken as is: a
    copy names its source only after the source was replayed."""
    wanted = {source for x in letters if (source := replayed_from(x)) is not None}
    if not wanted:
        return set()
    rows = _ledger(conn, topic, (offset for _, offset in wanted))
    return {(p, o) for p, o, _, _ in rows if (p, o) in wanted}


_RECORD = """
INSERT INTO dead_letter_replays AS r
    (topic, dlq_partition, dlq_offset, written_at, reason, stage, sensor_id, replayed_to)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (topic, dlq_partition, dlq_offset) DO UPDATE SET
    replays = CASE WHEN r.written_at IS NOT DISTINCT FROM EXCLUDED.written_at
                   THEN r.replays + 1 ELSE 1 END,
    first_replayed_at = CASE WHEN r.written_at IS NOT DISTINCT FROM EXCLUDED.written_at
                             THEN r.first_replayed_at ELSE now() END,
    written_at = EXCLUDED.written_at,
    reason = EXCLUDED.reason,
    stage = EXCLUDED.stage,
    sensor_id = EXCLUDED.sensor_id,
    replayed_to = EXCLUDED.replayed_to,
    last_replayed_at = now()
"""


def record_replays(
    conn: psycopg.Connection[Any], topic: str, done: Iterable[tuple[DeadLetter, str]]
) -> None:
    """Record (dead letter, where its copy went) pairs in one transaction."""
    rows = [
        (topic, x.partition, x.offset, x.timestamp, x.reason, stage_of(x), x.key, to)
        for x, to in done
    ]
    if rows:
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(_RECORD, rows)


def publish(
    kafka: KafkaSettings, letters: list[DeadLetter], *, timeout: float = 30.0
) -> tuple[list[tuple[DeadLetter, str]], list[Outcome]]:
    """Produce each letter's :func:`replay_message` to the raw readings topic and wait for
    Kafka; returns (letter, ``topic:partition:offset`` of its copy) for each confirmed one,
    and an outcome for each that Kafka refused or did not confirm in ``timeout`` seconds
    (such a copy may still arrive later: the next replay publishes it again)."""
    topic = topic_name("readings_raw", kafka.topic_prefix)
    producer = make_producer(kafka)
    confirmed: dict[LetterId, str] = {}
    refused: dict[LetterId, str] = {}

    def reporter(letter_id: LetterId) -> Callable[[KafkaError | None, Message], None]:
        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                refused[letter_id] = f"refused by Kafka: {err}"
            else:
                confirmed[letter_id] = f"{msg.topic()}:{msg.partition()}:{msg.offset()}"

        return report

    for letter in letters:
        message = replay_message(letter)
        produce(
            producer,
            topic,
            message.value,
            key=message.key,
            headers=message.headers,
            on_delivery=reporter((letter.partition, letter.offset)),
        )
    producer.flush(timeout)
    done: list[tuple[DeadLetter, str]] = []
    failed: list[Outcome] = []
    for letter in letters:
        letter_id = (letter.partition, letter.offset)
        if letter_id in confirmed:
            done.append((letter, confirmed[letter_id]))
        else:
            why = refused.get(letter_id, f"not confirmed by Kafka in {timeout}s")
            failed.append(Outcome.of(letter, why))
    return done, failed


def replay_dead_letters(
    kafka: KafkaSettings,
    db: DatabaseSettings,
    selection: Selection,
    *,
    dry_run: bool = False,
    force: bool = False,
    timeout: float = 30.0,
) -> ReplayReport:
    """Re-publish the replayable dead letters that ``selection`` matches, one per original
    record (the newest), that have not been replayed yet and are not the rejection of a
    replayed copy of one that was (all of them with ``force``), and record each once Kafka
    confirmed it.  See :func:`plan`.

    With ``dry_run`` nothing is published or recorded; the report says what would be.  The
    offsets of ``selection`` that hold no record are in ``report.missing``; one that holds
    a dead letter the other options do not match is skipped.  Raises
    :class:`DeadLetterError` when the topic or the ledger table is missing or another
    replay of the deployment is running, TimeoutError when the topic cannot be read, and
    psycopg errors when the database fails (what Kafka confirmed before that is
    re-published by the next run).
    """
    dlq_topic = topic_name("dead_letters", kafka.topic_prefix)
    report = ReplayReport(dry_run)
    with _connect(db) as conn:
        lock = ("iotmon.dlq.replay." + db.db_schema + "." + dlq_topic,)
        if not dry_run:
            row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", lock).fetchone()
            if not row or not row[0]:
                raise DeadLetterError("another replay of this deployment is running; try later")
        try:
            survey = _survey(kafka, selection, timeout)
            _unmatched_offsets(kafka, selection, survey.found, report, timeout)
            if survey.ends:
                second = read_dead_letters(kafka, selection, timeout=timeout, until=survey.ends)
                with closing(second):
                    for chunk in _chunks(second):
                        _replay_chunk(
                            kafka, conn, dlq_topic, chunk, survey.originals, report, force, timeout
                        )
        finally:
            if not dry_run:
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", lock)
    log.info(
        "dead letters %s: %d %s, %d already replayed, %d rejected again, %d skipped, "
        "%d failed, %d offsets not found",
        dlq_topic,
        len(report.replayed),
        "to replay" if dry_run else "replayed",
        len(report.already),
        len(report.again),
        len(report.skipped),
        len(report.failed),
        len(report.missing),
    )
    return report


def _chunks(letters: Iterable[DeadLetter]) -> Iterator[list[DeadLetter]]:
    chunk: list[DeadLetter] = []
    for letter in letters:
        chunk.append(letter)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class _Survey:
    originals: Originals = field(default_factory=Originals)
    ends: dict[int, int] = field(default_factory=dict)  # per partition: last offset read + 1
    found: set[int] = field(default_factory=set)  # the offsets of the selection read


def _survey(kafka: KafkaSettings, selection: Selection, timeout: float) -> _Survey:
    """The first read of a replay: the newest dead letter of each original record, and where
    the read ended, so that the second read gets the same records whatever is written
    meanwhile."""
    survey = _Survey()
    with closing(read_dead_letters(kafka, selection, timeout=timeout)) as letters:
        for letter in letters:
            survey.originals.add(letter)
            survey.ends[letter.partition] = letter.offset + 1
            if letter.offset in selection.offsets:
                survey.found.add(letter.offset)
    return survey


def _unmatched_offsets(
    kafka: KafkaSettings,
    selection: Selection,
    found: set[int],
    report: ReplayReport,
    timeout: float,
) -> None:
    """Account for the offsets of ``selection`` that the read did not yield: skipped when a
    dead letter is there that the other options leave out, else missing."""
    unmatched = set(selection.offsets) - found
    if unmatched and selection != Selection(offsets=selection.offsets):
        by_offset = Selection(offsets=frozenset(unmatched))
        with closing(read_dead_letters(kafka, by_offset, timeout=timeout)) as letters:
            for letter in letters:
                note = "not selected: the other options do not match it"
                report.skipped.append(Outcome.of(letter, note))
                unmatched.discard(letter.offset)
    report.missing.extend(sorted(unmatched))


def _replay_chunk(
    kafka: KafkaSettings,
    conn: psycopg.Connection[Any],
    dlq_topic: str,
    letters: list[DeadLetter],
    originals: Originals,
    report: ReplayReport,
    force: bool,
    timeout: float,
) -> None:
    planned = plan(
        letters,
        previous_replays(conn, dlq_topic, letters),
        replayed=replayed_sources(conn, dlq_topic, letters),
        originals=originals,
        force=force,
    )
    report.already.extend(planned.already)
    report.again.extend(planned.again)
    report.skipped.extend(planned.skipped)
    if report.dry_run:
        report.replayed.extend(Outcome.of(x) for x in planned.todo)
        return
    done, failed = publish(kafka, planned.todo, timeout=timeout)
    # Only now, with Kafka's confirmation: a record that was not published must stay
    # eligible for the next run.
    record_replays(conn, dlq_topic, done)
    report.replayed.extend(Outcome.of(x, to) for x, to in done)
    report.failed.extend(failed)
