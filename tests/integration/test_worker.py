"""Stream processing on the real Kafka and PostgreSQL: `iotmon worker` processes, the sinks,
and a ground truth computed independently from the same readings."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.masterdata import MasterData, import_master_data
from producers.thresholds import import_thresholds
from schemas.aggregates import HourlyAggregate
from schemas.master import Location, Sensor
from schemas.readings import Reading, ReadingBatch
from schemas.topics import topic_name
from stream_apps.processing.engine import SeenChunk
from tests.ground_truth import expected_hourly, hours_ago, make_readings
from tests.helpers import read_topic, value_of, wait_for
from tests.pipeline import Pipeline

pytestmark = pytest.mark.integration


@pytest.fixture
def pipeline(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, test_id: str, tmp_path: Path
) -> Iterator[Pipeline]:
    p = Pipeline(stack, kafka, db, test_id, tmp_path)
    yield p
    p.close()


def reading(sensor: str, at: datetime, pcv: str, temperature: str = "30.0") -> Reading:
    return Reading(
        sensor_id=sensor,
        loc_id=sensor[-4:],
        capture_dt=at,
        temperature=Decimal(temperature),
        humidity=Decimal("60.0"),
        pcv_temperature=Decimal(pcv),
        source="kafka",
        received_at=at,
    )


def test_final_hourly_rows_equal_the_ground_truth(pipeline: Pipeline) -> None:
    readings = make_readings(24, 3, hours_ago(4), every_s=30, duplicates=0.05, shuffle_s=400)
    expected = expected_hourly(readings)
    assert len(readings) > 8000 and len(expected) == 24 * 3
    pipeline.worker()
    pipeline.wait_ready()
    pipeline.send(readings)
    wait_for(
        lambda: len(pipeline.finals()) >= len(expected),
        timeout=120,
        what=f"{len(expected)} final hourly rows",
    )
    assert pipeline.finals() == expected
    assert (
        pipeline.scalar(
            "SELECT count(*) FROM hourly_aggregates WHERE NOT is_final"
            " AND sensor_id LIKE 'TEMPIOT-%%'"
        )
        == 0
    )


def test_running_aggregates_are_paced_and_the_newest_counts_arrive(
    pipeline: Pipeline, kafka: KafkaSettings
) -> None:
    """Six readings of one sensor in the current hour, each its own record, 0.4 s apart: the
    hour's running aggregate goes out at the first and once more when due (every 5 s by
    default), with all six counted, instead of once per reading."""
    pipeline.worker()
    pipeline.wait_ready()
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    for i in range(6):
        pipeline.send([reading("TEMPIOT-P001", hour + timedelta(minutes=30, seconds=i), "25.0")])
        time.sleep(0.4)

    def running() -> list[tuple[bool, int]]:
        msgs = read_topic(
            kafka,
            topic_name("aggregates_hourly", kafka.topic_prefix),
            until=lambda got: any(b'"TEMPIOT-P001"' in value_of(m) for m in got),
            timeout=5,
        )
        aggs = [HourlyAggregate.model_validate_json(value_of(m)) for m in msgs]
        return [
            (a.is_final, a.temperature.count)
            for a in aggs
            if a.sensor_id == "TEMPIOT-P001" and a.temperature is not None
        ]

    wait_for(
        lambda: (
            pipeline.scalar(
                "SELECT temperature_count FROM hourly_aggregates WHERE sensor_id = %s",
                ("TEMPIOT-P001",),
            )
            == 6
        ),
        timeout=30,
        what="the running aggregate of all six readings in the database",
    )
    assert running() == [(False, 1), (False, 6)]


def test_a_silent_sensor_gets_its_final_hour_without_more_input(pipeline: Pipeline) -> None:
    start = hours_ago(2)
    readings = [reading("TEMPIOT-S001", start + timedelta(minutes=m), "25.0") for m in range(60)]
    pipeline.worker()
    pipeline.wait_ready()
    pipeline.send(readings)
    sent = time.monotonic()
    # the hour ended more than the grace period ago; the partition then goes quiet
    wait_for(
        lambda: len(pipeline.finals("TEMPIOT-S001")) == 1,
        timeout=30,
        what="the final hour of a sensor that stopped sending",
    )
    assert time.monotonic() - sent < 30
    (row,) = pipeline.finals("TEMPIOT-S001").values()
    assert row["count"] == 60


def test_hovering_at_a_band_edge_gives_exactly_the_expected_alerts(
    pipeline: Pipeline, kafka: KafkaSettings, db: DatabaseSettings
) -> None:
    import_thresholds(
        db,
        kafka,
        [
            {
                "threshold_type": "pcv_temperature",
                "level": "green",
                "min_value": "0",
                "max_value": "30.90",
                "hold_seconds": 60,
                "clear_seconds": 60,
                "clear_margin": "0.5",
            },
            {
                "threshold_type": "pcv_temperature",
                "level": "yellow",
                "min_value": "31.00",
                "max_value": "32.90",
                "hold_seconds": 60,
                "clear_seconds": 60,
                "clear_margin": "0.5",
            },
            {
                "threshold_type": "pcv_temperature",
                "level": "orange",
                "min_value": "33.00",
                "hold_seconds": 60,
                "clear_seconds": 60,
                "clear_margin": "0.5",
            },
        ],
    )
    values = (
        ["30.0"] * 3
        + ["31.1", "31.3", "31.0", "31.2", "31.1", "31.4", "31.2"]
        + ["30.9", "31.1", "30.7", "31.0", "30.6"] * 3
        + ["33.2"] * 8
        + ["32.95", "33.0", "32.9", "33.1"]
        + ["30.0"] * 8
    )
    import_master_data(
        db,
        kafka,
        MasterData(
            [Location(loc_id="H001", plant="P1", factory="SinPyeong", building="MX-1", floor=2)],
            [Sensor(sensor_id="TEMPIOT-H001", loc_id="H001")],
        ),
    )
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    pipeline.worker()
    pipeline.wait_ready()
    pipeline.send(
        reading("TEMPIOT-H001", t0 + timedelta(seconds=10 * i), v) for i, v in enumerate(values)
    )

    def transitions() -> list[str]:
        return [
            r[0]
            for r in pipeline.query("SELECT transition FROM alert_events ORDER BY reading_time")
        ]

    wait_for(lambda: len(transitions()) >= 3, timeout=60, what="three alert events")
    time.sleep(2)  # nothing more may follow
    assert transitions() == ["raised", "escalated", "resolved"]
    rows = pipeline.query("SELECT alert_type, alert_level, state, threshold_level FROM alerts")
    assert rows == [("pcv_temperature", "critical", "resolved", "orange")]
    # Every event on the topic carries where the sensor is (for the topic's subscribers).
    places = pipeline.query(
        "SELECT DISTINCT payload->>'plant', payload->>'factory', payload->>'building',"
        " (payload->>'floor')::int FROM alert_events"
    )
    assert places == [("P1", "SinPyeong", "MX-1", 2)]


def test_a_new_threshold_reaches_the_running_worker(
    pipeline: Pipeline, kafka: KafkaSettings, db: DatabaseSettings
) -> None:
    import_master_data(
        db,
        kafka,
        MasterData(
            [Location(loc_id="T001", factory="SinPyeong", building="MX-1", floor=1)],
            [Sensor(sensor_id="TEMPIOT-T001", loc_id="T001")],
        ),
    )
    pipeline.worker()
    pipeline.wait_ready()

    def status_after_reading() -> str | None:
        at = datetime.now(UTC)
        pipeline.send([reading("TEMPIOT-T001", at, "32.0")])
        wait_for(
            lambda: (
                pipeline.scalar(
                    "SELECT capture_dt FROM latest_readings WHERE sensor_id = 'TEMPIOT-T001'"
                )
                == at
            ),
            timeout=20,
            what="the reading in latest_readings",
        )
        return pipeline.scalar(  # type: ignore[no-any-return]
            "SELECT pcv_temperature_status FROM latest_readings WHERE sensor_id = 'TEMPIOT-T001'"
        )

    assert status_after_reading() is None  # no thresholds for the metric: null, not normal
    import_thresholds(
        db,
        kafka,
        [
            {
                "threshold_type": "pcv_temperature",
                "level": "green",
                "min_value": "0",
                "max_value": "30.90",
            },
            {
                "threshold_type": "pcv_temperature",
                "level": "yellow",
                "min_value": "31.00",
                "max_value": "32.90",
            },
            {"threshold_type": "pcv_temperature", "level": "orange", "min_value": "33.00"},
            # a factory-scoped band is more specific than the global ones
            {
                "threshold_type": "temperature",
                "level": "red",
                "min_value": "29",
                "factory": "SinPyeong",
            },
        ],
    )
    deadline = time.monotonic() + 15
    status = None
    while time.monotonic() < deadline and status != "warning":
        status = status_after_reading()
    assert status == "warning"
    assert (
        pipeline.scalar(
            "SELECT temperature_status FROM latest_readings WHERE sensor_id = 'TEMPIOT-T001'"
        )
        == "critical"
    )


def test_a_sensor_that_goes_silent_raises_an_alert_resolved_by_its_next_reading(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, test_id: str, tmp_path: Path
) -> None:
    p = Pipeline(stack, kafka, db, test_id, tmp_path, silent_after_s="4")
    try:
        p.worker()
        p.wait_ready()
        now = datetime.now(UTC).replace(microsecond=0)
        p.send([reading("TEMPIOT-Q001", now - timedelta(seconds=5), "25.0")])

        def events() -> list[tuple[str, str]]:
            return [
                (r[0], r[1])
                for r in p.query(
                    "SELECT payload->>'sensor_id', transition FROM alert_events"
                    " WHERE payload->>'kind' = 'sensor_silent' ORDER BY decided_at"
                )
            ]

        wait_for(
            lambda: ("TEMPIOT-Q001", "raised") in events(), timeout=30, what="a sensor-silent alert"
        )
        p.send([reading("TEMPIOT-Q001", datetime.now(UTC), "25.0")])
        wait_for(
            lambda: ("TEMPIOT-Q001", "resolved") in events(),
            timeout=30,
            what="the silent alert resolved",
        )
        assert p.query(
            "SELECT state FROM alerts WHERE kind = 'sensor_silent' AND sensor_id = 'TEMPIOT-Q001'"
        ) == [("resolved",)]
    finally:
        p.close()


def test_the_partitions_take_turns_to_be_ticked(pipeline: Pipeline, kafka: KafkaSettings) -> None:
    """A tick visits every sensor of its partition.  Ticking all partitions at once held
    up the readings behind them every interval, so one partition is ticked at a time, in
    turn, each still once per interval."""
    pipeline.worker()
    pipeline.wait_ready()
    n = pipeline.partitions

    def ticks(messages: list[Any]) -> list[tuple[datetime, int]]:
        found = []
        for m in messages:
            batch = ReadingBatch.model_validate_json(m.value())
            if batch.tick_at is not None:
                found.append((batch.tick_at, m.partition()))
        return sorted(found)

    got = read_topic(
        kafka,
        topic_name("readings", kafka.topic_prefix),
        until=lambda ms: len({p for _, p in ticks(ms)[-3 * n :]}) == n and len(ticks(ms)) >= 4 * n,
        timeout=60,
    )
    last = ticks(got)[-3 * n :]
    assert {p for _, p in last} == set(range(n)), "every partition is ticked"
    assert len({at for at, _ in last}) == len(last), "no two partitions ticked at once"
    order = [p for _, p in last]
    assert all(b == (a + 1) % n for a, b in itertools.pairwise(order)), order


def test_the_capture_instants_of_a_closed_hour_are_sealed_then_deleted(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, test_id: str, tmp_path: Path
) -> None:
    """300 readings of one sensor-hour seal two chunks of 128 capture instants into the
    chunk table's changelog; once the data closes the hour and OUTBOX_KEEP_S has passed,
    both are deleted there (tombstones), and the final row counts every reading once."""
    p = Pipeline(stack, kafka, db, test_id, tmp_path, outbox_keep_s="2")
    try:
        start = hours_ago(3)
        readings = [
            reading("TEMPIOT-C001", start + timedelta(seconds=10 * i), "25.0") for i in range(300)
        ]
        closing = reading("TEMPIOT-C001", start + timedelta(hours=1, minutes=11), "25.0")
        p.worker()
        p.wait_ready()
        p.send(readings + readings[:20])  # 20 duplicates, found in the first chunk
        p.send([closing])
        changelog = f"{kafka.topic_prefix}worker-{test_id}-sensor-seen-changelog"
        hour = int(start.timestamp())
        keys = {f"TEMPIOT-C001|{hour}|{i}".encode() for i in range(2)}

        def deleted(messages: list[Any]) -> bool:
            return {m.key() for m in messages if m.value() is None} == keys

        got = read_topic(kafka, changelog, until=deleted, timeout=60)
        assert deleted(got), [(m.key(), m.value() is None) for m in got]
        stored = [m for m in got if m.value() is not None]
        assert {m.key() for m in stored} == keys
        chunks = [SeenChunk.model_validate_json(value_of(m)) for m in stored]
        assert sorted(len(c.ms or ()) for c in chunks) == [128, 128]
        wait_for(lambda: len(p.finals("TEMPIOT-C001")) == 2, timeout=30, what="the two final hours")
        counts = {row["count"] for row in p.finals("TEMPIOT-C001").values()}
        assert counts == {1, 300}
    finally:
        p.close()
