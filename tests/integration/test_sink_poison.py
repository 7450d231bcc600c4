"""Every sink survives any single record: real Kafka and PostgreSQL.

For each sink: a record that does not decode and a record that decodes but that the
database refuses as data (a value beyond its column, a NUL character in a text column) sit
between good records of the same poll.  The sink keeps running (the same thread), the two
go to the dead-letter topic with the reason, the stage, the exception type, their origin and
their bytes, the good records are stored, and the committed offsets move past all of them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal

import pytest
from confluent_kafka import Consumer, TopicPartition

from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.kafka import make_producer
from schemas.alerts import AlertTransition
from schemas.deadletters import DeadLetterHeaders as H
from schemas.readings import ReadingBatch
from schemas.topics import TopicId, topic_name
from tests.helpers import headers_of, read_topic, wait_for
from tests.integration.test_output_sinks import Sinks, aggregate, alert_event, status
from tests.integration.test_readings_sink import reading

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Case:
    sink: str
    topic: TopicId
    good: Callable[[int], bytes]
    refused: bytes  # decodes, refused by the database
    refused_error: str
    stored: str  # a query counting the good records' rows


def _reading(n: int, temperature: str = "25.0") -> bytes:
    return ReadingBatch(readings=[reading(n, n, temperature)]).model_dump_json().encode()


def _nul_status() -> bytes:
    bad = status("TEMPIOT-A011", 1, "25.0")
    return bad.model_copy(update={"loc_id": "A0\x0011"}).model_dump_json().encode()


ALERT = uuid.uuid4()

CASES = [
    Case(
        "readings",
        "readings",
        _reading,
        _reading(99, "123456789.5"),  # numeric(6, 2)
        "NumericValueOutOfRange",
        "SELECT count(*) FROM readings",
    ),
    Case(
        "aggregates",
        "aggregates_hourly",
        lambda n: aggregate(f"TEMPIOT-A{n:03d}", 0, count=1).model_dump_json().encode(),
        aggregate("TEMPIOT-A099", 0, count=1)
        .model_copy(update={"loc_id": "A\x00099"})
        .model_dump_json()
        .encode(),
        "DataError",
        "SELECT count(*) FROM hourly_aggregates",
    ),
    Case(
        "latest",
        "latest",
        lambda n: status(f"TEMPIOT-A{n:03d}", n, "25.0").model_dump_json().encode(),
        _nul_status(),
        "DataError",
        "SELECT count(*) FROM latest_readings",
    ),
    Case(
        "alerts",
        "alerts",
        lambda n: alert_event(uuid.uuid4(), AlertTransition.RAISED, n).model_dump_json().encode(),
        alert_event(ALERT, AlertTransition.RAISED, 1)
        .model_copy(update={"measured_value": Decimal("123456789.5")})
        .model_dump_json()
        .encode(),
        "NumericValueOutOfRange",
        "SELECT count(*) FROM alert_events",
    ),
]


@pytest.fixture
def sinks(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, group_id: str
) -> Iterator[Sinks]:
    s = Sinks(stack, kafka, db, group_id)
    yield s
    s.close()


@pytest.mark.parametrize("case", CASES, ids=[c.sink for c in CASES])
def test_a_poison_record_is_dead_lettered_and_the_sink_goes_on(sinks: Sinks, case: Case) -> None:
    kafka = sinks.kafka
    topic = topic_name(case.topic, kafka.topic_prefix)
    undecodable = b"\xff{not json"
    sent = [case.good(1), undecodable, case.good(2), case.refused, case.good(3)]
    producer = make_producer(kafka)
    for value in sent:  # one partition, so that one poll holds them all
        producer.produce(topic, value, key=b"TEMPIOT-A001", partition=0)
    assert producer.flush(10) == 0

    running = sinks.start(case.sink)
    wait_for(lambda: sinks.rows(case.stored)[0][0] == 3, what="the three good records")
    dead = read_topic(
        kafka,
        topic_name("dead_letters", kafka.topic_prefix),
        until=lambda m: len(m) >= 2,
        timeout=30,
    )
    assert len(dead) == 2
    by_offset = {int(headers_of(m)[H.ORIGIN_OFFSET]): m for m in dead}
    assert sorted(by_offset) == [1, 3]
    for offset, error in ((1, "ValidationError"), (3, case.refused_error)):
        msg, headers = by_offset[offset], headers_of(by_offset[offset])
        assert msg.value() == sent[offset]  # the original bytes
        assert headers[H.REASON] == b"internal_error"
        assert headers[H.STAGE] == f"sink.{case.sink}".encode()
        assert headers[H.ERROR].decode() == error
        assert headers[H.ORIGIN_TOPIC] == topic.encode()
        assert headers[H.ORIGIN_PARTITION] == b"0"
        assert error in headers[H.DETAIL].decode()
    assert (
        running.registry.get_sample_value(
            "iotmon_stage_poison_total", {"stage": f"sink.{case.sink}"}
        )
        == 2
    )
    assert running.thread.is_alive()  # the same sink, not a restarted one

    # Another client of the group asks (a consumer is not to be shared between threads).
    probe = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"{sinks.settings.sink.group_prefix}-{case.sink}",
        }
    )

    def committed() -> int:
        got = probe.committed([TopicPartition(topic, 0)], timeout=10)
        return int(got[0].offset)

    try:
        wait_for(lambda: committed() == len(sent), what="offsets committed past every record")
    finally:
        probe.close()
    # More good records after the poison ones are stored as usual.
    producer.produce(topic, case.good(4), key=b"TEMPIOT-A004", partition=0)
    assert producer.flush(10) == 0
    wait_for(lambda: sinks.rows(case.stored)[0][0] == 4, what="a good record after the poison")
