"""Records found to break a stage's boundary, each with the real services.

* a reception time whose offset the readings topic's model writes but cannot read back
  (a whole batch of other sensors' readings was dead-lettered downstream);
* a dead-letter topic that takes smaller records than the registry's (the dead letter of a
  large payload was refused, and ingest stopped on it at every start);
* PostgreSQL failures told apart by SQLSTATE: a read-only database or a missing table is
  waited for, an index row too large is the record's fault;
* an alert event without an alert level is dead-lettered, not dropped with a log line.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import orjson
import psycopg
import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.kafka import make_producer
from producers.masterdata import import_master_data
from schemas.alerts import AlertTransition
from schemas.common import Status
from schemas.deadletters import DeadLetterHeaders as H
from schemas.readings import ReadingBatch
from schemas.topics import topic_name
from stream_apps.common.unavailable import database_unavailable
from tests.helpers import headers_of, read_topic, value_of, wait_for
from tests.integration.test_ingest import (
    SENSORS,
    Running,
    batches,
    plant,
    reading,
    settings_for,
)
from tests.integration.test_output_sinks import Sinks, alert_event

pytestmark = pytest.mark.integration


@pytest.fixture
def ingest(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, group_id: str
) -> Iterator[Running]:
    import_master_data(db, kafka, plant())
    running = Running(settings_for(stack, kafka, db, group_id))
    yield running
    running.close()


def test_a_reception_time_with_an_odd_offset_is_written_as_utc(
    ingest: Running, kafka: KafkaSettings
) -> None:
    raw = topic_name("readings_raw", kafka.topic_prefix)
    producer = make_producer(kafka)
    producer.produce(
        raw,
        orjson.dumps(reading(SENSORS[2])),
        key=SENSORS[2].encode(),
        headers=[("received_at", b"2025-01-01T00:00:00+23:59:59.999999")],
    )
    assert producer.flush(10) == 0
    # ``batches`` reads every record back with the topic's model.
    ((_, batch),) = batches(kafka, 1)
    (got,) = batch.readings
    assert got.received_at.utcoffset() is not None
    assert got.received_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert ReadingBatch.model_validate_json(batch.model_dump_json()) == batch


def test_a_dead_letter_topic_with_a_smaller_limit_gets_the_start_of_the_payload(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, group_id: str
) -> None:
    dlq = topic_name("dead_letters", kafka.topic_prefix)
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        dlq,
        incremental_configs=[
            ConfigEntry("max.message.bytes", "1048588", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    admin.incremental_alter_configs([resource])[resource].result(30)
    import_master_data(db, kafka, plant())
    big = os.urandom(1_500_000)  # over ingest's 1 MiB payload limit, and the DLQ's
    producer = make_producer(kafka)
    raw = topic_name("readings_raw", kafka.topic_prefix)
    producer.produce(raw, big, key=SENSORS[0].encode())
    producer.produce(raw, orjson.dumps(reading(SENSORS[1])), key=SENSORS[1].encode())
    assert producer.flush(10) == 0
    ingest = Running(settings_for(stack, kafka, db, group_id))
    try:
        assert len(batches(kafka, 1)) == 1
        (dead,) = read_topic(kafka, dlq, until=bool)
        headers = headers_of(dead)
        assert headers[H.REASON] == b"too_large"
        assert headers[H.SIZE] == b"1500000"
        assert value_of(dead) == big[: len(value_of(dead))]
        assert len(value_of(dead)) < 1_048_588
        wait_for(lambda: ingest.metric("iotmon_ingest_records_total") == 2, 10, "both records")
        ingest.processor.commit()  # the dead letter was taken: nothing refused
        assert ingest.thread.is_alive()
    finally:
        ingest.close()


def _failure(db: DatabaseSettings, statement: str, **options: str) -> psycopg.Error:
    conninfo = psycopg.conninfo.make_conninfo(db.url, **options)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        try:
            conn.execute(statement)
        except psycopg.Error as exc:
            return exc
    raise AssertionError(f"{statement!r} did not fail")


def test_database_failures_are_told_apart_by_sqlstate(db: DatabaseSettings) -> None:
    read_only = _failure(
        db,
        "CREATE TABLE t (x int)",
        options="-c default_transaction_read_only=on",
    )
    missing = _failure(db, "SELECT * FROM no_such_table")
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        conn.execute("CREATE TABLE wide (k text PRIMARY KEY)")
    too_large = _failure(db, f"INSERT INTO wide VALUES ('{os.urandom(3000).hex()}')")
    overflow = _failure(db, "SELECT 123456789.5::numeric(6, 2)")
    nul = _failure(db, "SELECT E'a\\\\x00b'::bytea::text::int")
    try:
        psycopg.connect("postgresql://iotmon@127.0.0.1:1/iotmon", connect_timeout=2)
    except psycopg.OperationalError as exc:
        refused = exc
    assert isinstance(too_large, psycopg.OperationalError)  # why the class alone misleads
    assert database_unavailable(read_only)
    assert database_unavailable(missing)
    assert database_unavailable(refused)
    assert not database_unavailable(too_large)
    assert not database_unavailable(overflow)
    assert not database_unavailable(nul)
    assert not database_unavailable(ValueError("not a database error"))


@pytest.fixture
def sinks(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, group_id: str
) -> Iterator[Sinks]:
    s = Sinks(stack, kafka, db, group_id)
    yield s
    s.close()


def test_an_alert_event_without_an_alert_level_is_dead_lettered(sinks: Sinks) -> None:
    good = alert_event(uuid.uuid4(), AlertTransition.RAISED, 1)
    normal = alert_event(uuid.uuid4(), AlertTransition.RAISED, 2).model_copy(
        update={"level": Status.NORMAL}
    )
    sinks.send("alerts", "TEMPIOT-A011", [normal, good])
    sinks.start("alerts")
    wait_for(lambda: sinks.rows("SELECT count(*) FROM alert_events")[0][0] == 1, what="the good")
    (dead,) = read_topic(
        sinks.kafka, topic_name("dead_letters", sinks.kafka.topic_prefix), until=bool
    )
    headers = headers_of(dead)
    assert headers[H.STAGE] == b"sink.alerts"
    assert b"not an alert level" in headers[H.DETAIL]
    assert value_of(dead) == normal.model_dump_json().encode()
