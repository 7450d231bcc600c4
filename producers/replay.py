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

Safe to run twice: every dead letter re-published is recorded in the ``dead_letter_replays``
table once Kafka has confirmed its copy, and a later replay skips it unless forced.  A crash
between the confirmation and the record re-publishes at most those records once more, which
is harmless: downstream a reading is identified by its sensor id and capture time and
stored once.  One replay of a deployment runs at a time (a PostgreSQL advisory lock): a
second one started meanwhile stops with :class:`DeadLetterError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
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
    skipped: list[Outcome] = field(default_factory=list)
    failed: list[Outcome] = field(default_factory=list)


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


def plan(
    letters: Iterable[DeadLetter], previous: Mapping[LetterId, datetime], *, force: bool = False
) -> tuple[list[DeadLetter], list[Outcome], list[Outcome]]:
    """Split ``letters`` into (to publish, already replayed, cannot be replayed), given when
    each dead letter was last replayed (``previous``)."""
    todo: list[DeadLetter] = []
    already: list[Outcome] = []
    skipped: list[Outcome] = []
    for letter in letters:
        why = refusal(letter)
        when = previous.get((letter.partition, letter.offset))
        if why is not None:
            skipped.append(Outcome.of(letter, why))
        elif when is not None and not force:
            already.append(Outcome.of(letter, f"replayed at {when.isoformat()}"))
        else:
            todo.append(letter)
    return todo, already, skipped


def _connect(db: DatabaseSettings) -> psycopg.Connection[tuple[Any, ...]]:
    conn = psycopg.connect(db.url, autocommit=True)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(db.db_schema)))
    return conn


def previous_replays(
    conn: psycopg.Connection[Any], topic: str, letters: Iterable[DeadLetter]
) -> dict[LetterId, datetime]:
    """When each of ``letters`` was last replayed (absent: never).  A row for the same
    offset of an earlier record (the topic was deleted and created again) does not count."""
    wanted = {(x.partition, x.offset): x.timestamp for x in letters}
    if not wanted:
        return {}
    try:
        rows = conn.execute(
            "SELECT dlq_partition, dlq_offset, written_at, last_replayed_at"
            " FROM dead_letter_replays WHERE topic = %s AND dlq_offset = ANY(%s)",
            (topic, sorted({offset for _, offset in wanted})),
        ).fetchall()
    except psycopg.errors.UndefinedTable as exc:
        raise DeadLetterError("the replay ledger is missing; run `iotmon migrate`") from exc
    return {
        (p, o): last for p, o, written, last in rows if (p, o) in wanted and wanted[p, o] == written
    }


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
    """Re-publish the replayable dead letters that ``selection`` matches and have not been
    replayed yet (all of them with ``force``), and record each once Kafka confirmed it.

    With ``dry_run`` nothing is published or recorded; the report says what would be.
    Raises :class:`DeadLetterError` when the topic or the ledger table is missing or another
    replay of the deployment is running, TimeoutError when the topic cannot be read, and
    psycopg errors when the database fails (what Kafka confirmed before that is re-published
    by the next run).
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
            chunk: list[DeadLetter] = []
            with closing(read_dead_letters(kafka, selection, timeout=timeout)) as letters:
                for letter in letters:
                    chunk.append(letter)
                    if len(chunk) >= CHUNK:
                        _replay_chunk(kafka, conn, dlq_topic, chunk, report, force, timeout)
                        chunk = []
            _replay_chunk(kafka, conn, dlq_topic, chunk, report, force, timeout)
        finally:
            if not dry_run:
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", lock)
    log.info(
        "dead letters %s: %d %s, %d already replayed, %d skipped, %d failed",
        dlq_topic,
        len(report.replayed),
        "to replay" if dry_run else "replayed",
        len(report.already),
        len(report.skipped),
        len(report.failed),
    )
    return report


def _replay_chunk(
    kafka: KafkaSettings,
    conn: psycopg.Connection[Any],
    dlq_topic: str,
    letters: list[DeadLetter],
    report: ReplayReport,
    force: bool,
    timeout: float,
) -> None:
    todo, already, skipped = plan(letters, previous_replays(conn, dlq_topic, letters), force=force)
    report.already.extend(already)
    report.skipped.extend(skipped)
    if report.dry_run:
        report.replayed.extend(Outcome.of(x) for x in todo)
        return
    done, failed = publish(kafka, todo, timeout=timeout)
    # Only now, with Kafka's confirmation: a record that was not published must stay
    # eligible for the next run.
    record_replays(conn, dlq_topic, done)
    report.replayed.extend(Outcome.of(x, to) for x, to in done)
    report.failed.extend(failed)
