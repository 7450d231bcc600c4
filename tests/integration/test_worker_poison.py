"""Poison records on the real Kafka: the running worker dead-letters them and goes on, and
the aggregates of the good readings around them are exact."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message

from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from schemas.aggregates import HourlyAggregate
from schemas.deadletters import DeadLetter
from schemas.readings import Reading, ReadingBatch, SensorStatus
from schemas.topics import topic_name
from stream_apps.common.partitioning import partition_for
from stream_apps.processing.windows import average
from tests.ground_truth import hours_ago
from tests.helpers import headers_of, read_topic, value_of
from tests.pipeline import Pipeline

pytestmark = pytest.mark.integration

SENSORS = [f"TEMPIOT-V{i:03d}" for i in range(1, 7)]
POISON_VALUE = Decimal("99.9")  # no good reading has it
# Its local hour (Asia/Seoul) is in the year 10000: the engine raises OverflowError.
FAR_FUTURE = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


@pytest.fixture
def pipeline(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, test_id: str, tmp_path: Path
) -> Iterator[Pipeline]:
    p = Pipeline(stack, kafka, db, test_id, tmp_path)
    yield p
    p.close()


def reading(sensor: str, at: datetime, temperature: Decimal) -> Reading:
    return Reading(
        sensor_id=sensor,
        loc_id=sensor[-4:],
        capture_dt=at,
        temperature=temperature,
        humidity=Decimal("55.0"),
        pcv_temperature=None,
        source="kafka",
        received_at=at,
    )


def good_readings(start: datetime) -> list[Reading]:
    """Every sensor every 5 minutes for two hours, temperatures varying per reading."""
    return [
        reading(sid, start + timedelta(minutes=5 * i), Decimal(20 + n) + Decimal(i * 7 % 13) / 10)
        for n, sid in enumerate(SENSORS)
        for i in range(24)
    ]


def expected(readings: list[Reading]) -> dict[tuple[str, datetime], tuple[int, str, str]]:
    """(sensor, hour start) -> temperature count, max and average (two decimals)."""
    hours: dict[tuple[str, datetime], list[Decimal]] = {}
    for r in readings:
        hour = r.capture_dt.replace(minute=0, second=0, microsecond=0)  # KST: whole hours
        hours.setdefault((r.sensor_id, hour), []).append(r.temperature)
    cent = Decimal("0.01")
    return {
        key: (
            len(v),
            str(max(v).quantize(cent)),
            str((sum(v, Decimal(0)) / len(v)).quantize(cent, ROUND_HALF_UP)),
        )
        for key, v in hours.items()
    }


def newest_finals(messages: list[Message]) -> dict[tuple[str, datetime], tuple[int, str, str]]:
    finals = {}
    for m in messages:
        agg = HourlyAggregate.model_validate_json(value_of(m))
        if agg.is_final and agg.sensor_id in SENSORS and agg.temperature is not None:
            t = agg.temperature
            key = (agg.sensor_id, agg.hour_start)
            finals[key] = (t.count, str(t.max.quantize(Decimal("0.01"))), str(average(t)))
    return finals


def test_poison_records_are_dead_lettered_and_the_worker_goes_on(
    pipeline: Pipeline, kafka: KafkaSettings
) -> None:
    worker = pipeline.worker()
    pipeline.wait_ready()
    readings_topic = topic_name("readings", kafka.topic_prefix)
    n = pipeline.partitions
    target = partition_for(SENSORS[0], n)
    assert any(partition_for(s, n) != target for s in SENSORS), "other partitions too"

    start = hours_ago(3)
    good = good_readings(start)
    # Bytes that are not JSON, and a valid ReadingBatch whose first reading the engine
    # counts before it raises on the second: both in the partition of SENSORS[0].
    not_json = b"\x00\xffnot a reading batch"
    leaked = reading(SENSORS[0], start + timedelta(minutes=31), POISON_VALUE)
    overflow = (
        ReadingBatch(readings=[leaked, reading(SENSORS[0], FAR_FUTURE, Decimal("20.0"))])
        .model_dump_json()
        .encode()
    )

    by_partition: dict[int, list[Reading]] = {}
    for r in good:
        by_partition.setdefault(partition_for(r.sensor_id, n), []).append(r)
    offsets: dict[bytes, int] = {}

    def delivered(err: Any, msg: Message) -> None:
        assert err is None, err
        if msg.key() is not None:
            offsets[msg.key() or b""] = msg.offset() or 0

    def send(partition: int, value: bytes, key: bytes | None = None) -> None:
        pipeline.producer.produce(
            readings_topic, value, key=key, partition=partition, on_delivery=delivered
        )

    # Everything at once, so that the worker takes the poison records in the same batches
    # as good records before and after them.
    for partition, rs in sorted(by_partition.items()):
        rs.sort(key=lambda r: r.capture_dt)  # in time order: none is late
        size = -(-len(rs) // 3)
        thirds = [rs[i : i + size] for i in range(0, 3 * size, size)]
        send(partition, ReadingBatch(readings=thirds[0]).model_dump_json().encode())
        if partition == target:
            send(partition, not_json, b"poison-1")
        send(partition, ReadingBatch(readings=thirds[1]).model_dump_json().encode())
        if partition == target:
            send(partition, overflow, b"poison-2")
        send(partition, ReadingBatch(readings=thirds[2]).model_dump_json().encode())
    assert pipeline.producer.flush(30) == 0
    assert set(offsets) == {b"poison-1", b"poison-2"}

    # The good readings' finals are exact (the hours close on the idle clock).
    want = expected(good)
    assert len(want) == 2 * len(SENSORS)
    got = read_topic(
        kafka,
        topic_name("aggregates_hourly", kafka.topic_prefix),
        until=lambda ms: newest_finals(ms) == want,
        timeout=90,
    )
    assert newest_finals(got) == want

    # Both poison records are on the dead-letter topic, with their origin and bytes.
    letters = [
        DeadLetter.parse(
            partition=m.partition() or 0,
            offset=m.offset() or 0,
            key=m.key(),
            value=m.value(),
            headers=list(headers_of(m).items()),
        )
        for m in read_topic(
            kafka,
            topic_name("dead_letters", kafka.topic_prefix),
            until=lambda ms: len(ms) >= 2,
            timeout=30,
        )
    ]
    by_key = {letter.key: letter for letter in letters}
    assert len(letters) == 2 and set(by_key) == {"poison-1", "poison-2"}
    for key, payload, error in (
        ("poison-1", not_json, "ValidationError"),
        ("poison-2", overflow, "OverflowError"),
    ):
        letter = by_key[key]
        assert (letter.reason, letter.stage, letter.error) == ("internal_error", "worker", error)
        assert (letter.origin_topic, letter.origin_partition, letter.origin_offset) == (
            readings_topic,
            target,
            offsets[key.encode()],
        )
        assert letter.payload == payload

    # Nothing of the poison records reached an output.
    aggregates = [HourlyAggregate.model_validate_json(value_of(m)) for m in got]
    assert all(a.temperature is None or a.temperature.max != POISON_VALUE for a in aggregates), (
        "a reading of a dead-lettered record was counted"
    )
    assert all(a.hour_start.year < 9999 for a in aggregates)
    latest = read_topic(
        kafka,
        topic_name("latest", kafka.topic_prefix),
        until=lambda ms: (
            {SensorStatus.model_validate_json(value_of(m)).sensor_id for m in ms} >= set(SENSORS)
        ),
        timeout=30,
    )
    statuses = [SensorStatus.model_validate_json(value_of(m)) for m in latest]
    assert not [s for s in statuses if s.temperature == POISON_VALUE]
    late = read_topic(
        kafka, topic_name("readings_late", kafka.topic_prefix), until=lambda ms: False, timeout=2
    )
    assert not [m for m in late if b"99.9" in value_of(m)]

    # The same worker process did all of it: never restarted, no state repair needed.
    assert worker.proc is not None and worker.proc.poll() is None
    log = worker.log.read_text(errors="replace")
    assert "Restarting dead" not in log and "Crashed reason" not in log
    assert "state restored older" not in log
    assert log.count("sent to the dead-letter topic") == 2
