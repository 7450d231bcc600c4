"""Kafka -> PostgreSQL sinks: batch, write in one transaction, then commit the offsets.

A :class:`SinkRunner` owns one consumer group and one database connection.  Per poll it
decodes the records and hands them to its :class:`SinkWriter` inside one transaction.  The
offsets of records whose transaction committed are committed to Kafka at most every
``commit_every_s`` (and when partitions are revoked, and at the end): never before the
database has the rows, and not once per transaction, which at the realtime sink's pace was
dozens of blocking round trips to the broker a second.  Writers are idempotent (upserts
keyed by what identifies a row), so a replay after a crash changes nothing.

While the database is unreachable the runner pauses its partitions (the consumer keeps its
group membership without fetching), retries the same batch with capped exponential backoff,
and resumes when the write succeeds: nothing is lost and nothing is skipped.  Records that
cannot be decoded are bad data: logged, counted and skipped, never retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Generic, Protocol, TypeVar

import psycopg
from confluent_kafka import Consumer, Message, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge
from psycopg import sql
from pydantic import BaseModel, ValidationError

from stream_apps.common.offsets import PendingOffsets
from stream_apps.common.polling import poll_batch

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class SinkWriter(Protocol[M]):
    """Writes decoded records; called inside a transaction, must be idempotent."""

    name: str
    model: type[M]

    def write(self, conn: psycopg.Connection[Any], records: Sequence[M]) -> int:
        """Write ``records``; returns how many rows changed (for metrics)."""
        ...


class SinkMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "iotmon_sink_records_total", "Records written", ["sink"], registry=registry
        )
        self.rows = Counter(
            "iotmon_sink_rows_total", "Rows inserted or changed", ["sink"], registry=registry
        )
        self.invalid = Counter(
            "iotmon_sink_invalid_total",
            "Undecodable records skipped",
            ["sink"],
            registry=registry,
        )
        self.db_failures = Counter(
            "iotmon_sink_db_failures_total",
            "Failed write attempts (database unavailable)",
            ["sink"],
            registry=registry,
        )
        self.paused = Gauge(
            "iotmon_sink_paused",
            "1 while the sink waits for the database",
            ["sink"],
            registry=registry,
        )


class SinkRunner(Generic[M]):
    def __init__(
        self,
        consumer: Consumer,
        topic: str,
        db_url: str,
        db_schema: str,
        writer: SinkWriter[M],
        metrics: SinkMetrics,
        *,
        poll_max_messages: int = 2000,
        poll_timeout_s: float = 0.2,
        poll_linger_s: float = 0.02,
        commit_every_s: float = 0.5,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.consumer = consumer
        self.topic = topic
        self.db_url = db_url
        self.db_schema = db_schema
        self.writer = writer
        self.metrics = metrics
        self.poll_max = poll_max_messages
        self.poll_timeout = poll_timeout_s
        self.poll_linger = poll_linger_s
        self.commit_every = commit_every_s
        self.max_backoff = max_backoff_s
        self._conn: psycopg.Connection[Any] | None = None
        # Records written to the database, not yet committed to Kafka.
        self._pending = PendingOffsets()
        consumer.subscribe([topic], on_revoke=lambda _c, _p: self.commit())

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(self.db_url, connect_timeout=5)
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.db_schema)))
            conn.commit()
            self._conn = conn
        return self._conn

    def _decode(self, messages: list[Message]) -> list[M]:
        records: list[M] = []
        for msg in messages:
            value = msg.value()
            try:
                if value is None:
                    raise ValueError("empty record")
                records.append(self.writer.model.model_validate_json(value))
            except (ValidationError, ValueError) as exc:
                self.metrics.invalid.labels(self.writer.name).inc()
                log.error(
                    "%s: skipping undecodable record %s[%s]@%s: %s",
                    self.writer.name,
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                    exc,
                )
        return records

    def _write(self, records: list[M], stop: threading.Event) -> bool:
        """Write in one transaction, retrying while the database is down; False if stopped."""
        backoff = 0.2
        paused: list[TopicPartition] = []
        try:
            while True:
                try:
                    conn = self._connection()
                    with conn.transaction():
                        rows = self.writer.write(conn, records)
                    self.metrics.rows.labels(self.writer.name).inc(rows)
                    return True
                except psycopg.OperationalError as exc:
                    self.metrics.db_failures.labels(self.writer.name).inc()
                    if self._conn is not None:
                        self._conn.close()
                    if not paused:
                        paused = self.consumer.assignment()
                        self.consumer.pause(paused)
                        self.metrics.paused.labels(self.writer.name).set(1)
                        log.warning(
                            "%s: database unavailable (%s); pausing and retrying",
                            self.writer.name,
                            str(exc).strip(),
                        )
                    if stop.wait(backoff):
                        return False
                    backoff = min(backoff * 2, self.max_backoff)
        finally:
            if paused:
                self.consumer.resume(paused)
                self.metrics.paused.labels(self.writer.name).set(0)
                log.info("%s: database back; resumed", self.writer.name)

    def step(self, stop: threading.Event) -> int:
        """One poll: decode, write, and commit when due. Returns records consumed."""
        polled = poll_batch(self.consumer, self.poll_max, self.poll_timeout, self.poll_linger)
        messages = [m for m in polled if m.error() is None]
        if messages:
            records = self._decode(messages)
            if records and not self._write(records, stop):
                return 0  # stopped while waiting: nothing committed, the batch is re-read later
            self._pending.add(messages)
            self.metrics.records.labels(self.writer.name).inc(len(records))
        if self._pending.due(self.commit_every):
            self.commit()
        return len(messages)

    def commit(self) -> None:
        """Commit the offsets of every record written so far (their transactions committed)."""
        self._pending.commit(self.consumer, self.writer.name)

    def run(self, stop: threading.Event) -> None:
        log.info("sink %s: %s -> schema %s", self.writer.name, self.topic, self.db_schema)
        try:
            while not stop.is_set():
                self.step(stop)
            self.commit()
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
