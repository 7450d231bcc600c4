"""The readings sink on the real Kafka and PostgreSQL: idempotent, duplicates stored once,
offsets committed after the database, and a database outage loses nothing."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry

from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.kafka import make_producer
from schemas.readings import Reading, ReadingBatch
from schemas.topics import topic_name
from stream_apps.sinks.main import build
from stream_apps.sinks.runner import SinkMetrics, SinkRunner
from tests.helpers import wait_for
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def reading(sensor: int, second: int, temperature: str = "25.0") -> Reading:
    return Reading(
        sensor_id=f"TEMPIOT-A{sensor:03d}",
        loc_id=f"A{sensor:03d}",
        capture_dt=T0 + timedelta(seconds=second),
        temperature=Decimal(temperature),
        humidity=Decimal("50.0"),
        pcv_temperature=Decimal("25.4"),
        pcv_computed=True,
        source="mqtt",
        received_at=T0,
    )


def send(kafka: KafkaSettings, batches: list[list[Reading]]) -> None:
    producer = make_producer(kafka)
    for batch in batches:
        producer.produce(
            topic_name("readings", kafka.topic_prefix),
            ReadingBatch(readings=batch).model_dump_json().encode(),
            partition=0,
        )
    assert producer.flush(10) == 0


def count(db: DatabaseSettings) -> int:
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        row = conn.execute("SELECT count(*) FROM readings").fetchone()
        return int(row[0]) if row else 0


class RunningSink:
    def __init__(self, settings: Settings) -> None:
        self.registry = CollectorRegistry()
        metrics = SinkMetrics(self.registry)
        self.runner: SinkRunner[ReadingBatch] = build(settings, "readings", metrics)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.runner.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def metric(self, name: str) -> float:
        return self.registry.get_sample_value(name, {"sink": "readings"}) or 0.0

    def written_once(self) -> bool:
        return self.metric("iotmon_sink_records_total") == 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.runner.consumer.close()


def sink_settings(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, group: str
) -> Settings:
    return stack.model_copy(
        update={
            "kafka": kafka,
            "db": db,
            "sink": stack.sink.model_copy(update={"group_prefix": group, "max_backoff_s": 0.5}),
        }
    )


@pytest.fixture
def sink(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, group_id: str
) -> Iterator[RunningSink]:
    running = RunningSink(sink_settings(stack, kafka, db, group_id))
    yield running
    running.close()


def paused(sink: RunningSink) -> float | None:
    return sink.registry.get_sample_value("iotmon_stage_paused", {"stage": "sink.readings"})


def test_duplicates_are_stored_once_and_values_exactly(
    sink: RunningSink, kafka: KafkaSettings, db: DatabaseSettings
) -> None:
    first = [reading(s, i) for s in range(5) for i in range(20)]
    # a gateway retry and a bridge redelivery: the same readings again, across batches
    send(kafka, [first[:60], first[40:], first[:10]])
    wait_for(lambda: sink.metric("iotmon_sink_records_total") == 3, what="3 batches written")
    assert count(db) == 100
    assert sink.metric("iotmon_sink_rows_total") == 100
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        row = conn.execute(
            "SELECT temperature, pcv_temperature, pcv_computed, source FROM readings"
            " WHERE sensor_id = 'TEMPIOT-A003' AND capture_dt = %s",
            (T0 + timedelta(seconds=7),),
        ).fetchone()
    assert row == (Decimal("25.00"), Decimal("25.40"), True, "mqtt")


def test_replaying_the_topic_changes_nothing(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, group_id: str
) -> None:
    send(kafka, [[reading(s, i) for s in range(3) for i in range(10)]])
    for attempt in range(2):  # a second consumer group re-reads everything
        running = RunningSink(sink_settings(stack, kafka, db, f"{group_id}-{attempt}"))
        try:
            wait_for(running.written_once)
        finally:
            running.close()
        assert count(db) == 30


def test_database_outage_pauses_and_loses_nothing(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, group_id: str
) -> None:
    base = psycopg.conninfo.conninfo_to_dict(db.url)
    proxy = TcpProxy(str(base.get("host", "127.0.0.1")), int(str(base.get("port", 5432))))
    via_proxy = psycopg.conninfo.make_conninfo(db.url, host="127.0.0.1", port=proxy.port)
    settings = sink_settings(stack, kafka, db.model_copy(update={"url": via_proxy}), group_id)
    running = RunningSink(settings)
    try:
        send(kafka, [[reading(1, i) for i in range(50)]])
        wait_for(lambda: count(db) == 50)
        proxy.cut()
        for n in range(10):  # the plant keeps sending while the database is away
            send(kafka, [[reading(2, n * 50 + i) for i in range(50)]])
            time.sleep(0.3)
        wait_for(
            lambda: (
                (
                    running.registry.get_sample_value(
                        "iotmon_stage_infrastructure_failures_total", {"stage": "sink.readings"}
                    )
                    or 0
                )
                >= 2
            ),
            what="the sink noticing the outage",
        )
        assert (
            running.registry.get_sample_value("iotmon_stage_paused", {"stage": "sink.readings"})
            == 1.0
        )
        assert count(db) == 50
        time.sleep(3)
        proxy.restore()
        wait_for(lambda: count(db) == 550, timeout=30, what="catch-up after the outage")
        assert (
            running.registry.get_sample_value("iotmon_stage_paused", {"stage": "sink.readings"})
            == 0.0
        )
    finally:
        running.close()
        proxy.close()


def test_offsets_are_committed_when_due_and_only_for_written_records(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, group_id: str
) -> None:
    """The sink commits the offsets of written records at most every ``commit_every_s``
    (and when it stops), never before their transaction committed."""
    settings = sink_settings(stack, kafka, db, group_id)
    settings = settings.model_copy(
        update={"sink": settings.sink.model_copy(update={"commit_every_s": 3600})}
    )
    runner: SinkRunner[ReadingBatch] = build(settings, "readings", SinkMetrics(CollectorRegistry()))
    topic = topic_name("readings", kafka.topic_prefix)

    def committed() -> int:
        got = runner.consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return max(got[0].offset, 0)

    try:
        send(kafka, [[reading(s, i) for s in range(2)] for i in range(4)])
        stop = threading.Event()
        consumed = 0
        deadline = time.monotonic() + 30
        while consumed < 4 and time.monotonic() < deadline:
            consumed += runner.step(stop)
        assert consumed == 4
        assert count(db) == 8  # written ...
        assert committed() == 0  # ... and not committed before it is due
        runner.commit()  # what `run` does when it stops (and a revocation does)
        assert committed() == 4
        # Due at every step: committed by the step that wrote it.
        runner.polling = dataclasses.replace(runner.polling, commit_every_s=0)
        send(kafka, [[reading(5, 0)]])
        deadline = time.monotonic() + 30
        while committed() < 5 and time.monotonic() < deadline:
            runner.step(stop)
        assert committed() == 5
        assert count(db) == 9
    finally:
        runner.consumer.close()
