"""Kafka -> PostgreSQL sinks: batch, write in one transaction, then commit the offsets.

A :class:`SinkRunner` owns one consumer group and one database connection; its loop is the
shared :class:`~stream_apps.common.stage.StageRunner`.  Per poll it decodes the records and
hands them to its :class:`SinkWriter` inside one transaction.  The
offsets of records whose transaction committed are committed to Kafka at most every
``commit_every_s`` (and when partitions are revoked, and at the end): never before the
database has the rows, and not once per transaction, which at the realtime sink's pace was
dozens of blocking round trips to the broker a second.  Writers are idempotent (upserts
keyed by what identifies a row), so a replay after a crash changes nothing.

While the database is unreachable the runner pauses its partitions (the consumer keeps its
group membership without fetching), retries the same batch with capped exponential backoff,
and resumes when the write succeeds: nothing is lost and nothing is skipped.  A record that
cannot be decoded, or that the database refuses as data (a value that does not fit its
column, ...: the failing batch is bisected down to it), goes to the dead-letter topic with
its bytes and the error, and the others are written: one record never stops a sink.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import psycopg
from confluent_kafka import Consumer, Message, Producer
from prometheus_client import CollectorRegistry, Counter
from psycopg import sql
from pydantic import BaseModel

from schemas.deadletters import MAX_PAYLOAD_BYTES, Stage
from stream_apps.common.stage import Polling, Prepared, StageMetrics, StageRunner
from stream_apps.common.unavailable import database_unavailable, kafka_unavailable

log = logging.getLogger(__name__)

SINK_STAGES = {
    "readings": Stage.SINK_READINGS,
    "aggregates": Stage.SINK_AGGREGATES,
    "latest": Stage.SINK_LATEST,
    "alerts": Stage.SINK_ALERTS,
}

M = TypeVar("M", bound=BaseModel)


class SinkWriter(Protocol[M]):
    """Writes decoded records; called inside a transaction, must be idempotent."""

    name: str
    model: type[M]

    def write(self, conn: psycopg.Connection[Any], records: Sequence[M]) -> int:
        """Write ``records``; returns how many rows changed (for metrics)."""
        ...


@runtime_checkable
class AfterCommit(Protocol):
    """A writer with work to do once its transaction has committed (outside of it)."""

    def after_commit(self, conn: psycopg.Connection[Any], records: Sequence[Any]) -> None:
        """Raise only for a lost connection (the batch is written again, then this runs
        again); anything else is the writer's to log: the rows are committed."""
        ...


class SinkMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.stage = StageMetrics(registry)
        self.records = Counter(
            "iotmon_sink_records_total", "Records written", ["sink"], registry=registry
        )
        self.rows = Counter(
            "iotmon_sink_rows_total", "Rows inserted or changed", ["sink"], registry=registry
        )


class SinkRunner(StageRunner[M]):
    """One sink: a consumer group, a database connection and a producer for dead letters."""

    def is_transient(self, exc: BaseException) -> bool:
        # The database down, restarting, read-only, not migrated, without rights, or Kafka
        # away (for the dead letters): retried, never a bad record.  Anything else while
        # writing is narrowed down to the record that causes it (a value beyond its column,
        # an index row too large, ...) and dead-lettered.
        return database_unavailable(exc) or kafka_unavailable(exc)

    def __init__(
        self,
        consumer: Consumer,
        producer: Producer,
        topic: str,
        dead_letter_topic: str,
        db_url: str,
        db_schema: str,
        writer: SinkWriter[M],
        metrics: SinkMetrics,
        *,
        compacted: bool = False,
        dead_letter_max_payload: int = MAX_PAYLOAD_BYTES,
        poll_max_messages: int = 2000,
        poll_timeout_s: float = 0.2,
        poll_linger_s: float = 0.02,
        commit_every_s: float = 0.5,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.stage = SINK_STAGES[writer.name]
        super().__init__(
            consumer,
            producer,
            [topic],
            dead_letter_topic,
            metrics.stage,
            Polling(
                poll_max_messages, poll_timeout_s, poll_linger_s, commit_every_s, max_backoff_s
            ),
            dead_letter_max_payload,
        )
        self.topic = topic
        self.db_url = db_url
        self.db_schema = db_schema
        self.writer = writer
        self.metrics = metrics
        self.compacted = compacted
        self._conn: psycopg.Connection[Any] | None = None

    @property
    def poll_linger(self) -> float:
        return self.polling.linger_s

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(self.db_url, connect_timeout=5)
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.db_schema)))
            conn.commit()
            self._conn = conn
        return self._conn

    def prepare(self, msg: Message) -> M | None:
        value = msg.value()
        if value is None:
            if self.compacted:
                return None  # a tombstone of a compacted topic: nothing to store
            raise ValueError("a record without a value")
        return self.writer.model.model_validate_json(value)

    def write(self, items: Sequence[Prepared[M]]) -> None:
        """All of ``items`` in one transaction."""
        conn = self._connection()
        records = [item.item for item in items]
        with conn.transaction():
            rows = self.writer.write(conn, records)
        if isinstance(self.writer, AfterCommit):
            self.writer.after_commit(conn, records)
        self.metrics.rows.labels(self.writer.name).inc(rows)
        self.metrics.records.labels(self.writer.name).inc(len(items))

    def on_transient(self, exc: BaseException) -> None:
        if self._conn is not None:
            self._conn.close()

    def service_of(self, exc: BaseException) -> str:
        return "the database"

    def run(self, stop: threading.Event) -> None:
        log.info("sink %s: %s -> schema %s", self.writer.name, self.topic, self.db_schema)
        try:
            super().run(stop)
        finally:
            if self._conn is not None:
                self._conn.close()


def wait_for_database(url: str, timeout: float) -> None:
    """Block until PostgreSQL accepts connections (start-up ordering helper)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(url, connect_timeout=3).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
