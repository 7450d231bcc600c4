"""Crashes, scale-out and a database outage, each ending with a ground-truth check."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.thresholds import import_thresholds
from schemas.thresholds import Threshold
from stream_apps.common.partitioning import partition_for
from tests.ground_truth import expected_alert_event_ids, expected_hourly, hours_ago, make_readings
from tests.helpers import wait_for
from tests.pipeline import Pipeline
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

BANDS = [
    {
        "threshold_type": "pcv_temperature",
        "level": "green",
        "min_value": "0",
        "max_value": "30.90",
        "hold_seconds": 0,
        "clear_seconds": 120,
    },
    {
        "threshold_type": "pcv_temperature",
        "level": "yellow",
        "min_value": "31.00",
        "max_value": "32.90",
        "hold_seconds": 60,
        "clear_seconds": 120,
    },
    {
        "threshold_type": "pcv_temperature",
        "level": "orange",
        "min_value": "33.00",
        "hold_seconds": 60,
        "clear_seconds": 120,
    },
]


def band_models() -> list[Threshold]:
    now = datetime.now(UTC)
    return [Threshold(threshold_id=i, upd_dt=now, **b) for i, b in enumerate(BANDS)]


@pytest.fixture
def data() -> tuple[list, dict, set[str]]:  # type: ignore[type-arg]
    readings = make_readings(24, 3, hours_ago(4), every_s=20, duplicates=0.05, shuffle_s=300)
    return readings, expected_hourly(readings), expected_alert_event_ids(readings, band_models())


def event_ids(p: Pipeline) -> list[str]:
    return [str(r[0]) for r in p.query("SELECT event_id FROM alert_events")]


def check(p: Pipeline, expected: dict, alert_ids: set[str], timeout: float = 180) -> None:  # type: ignore[type-arg]
    try:
        wait_for(
            lambda: len(p.finals()) >= len(expected),
            timeout=timeout,
            what=f"{len(expected)} final hours",
        )
    except AssertionError:
        missing = sorted(set(expected) - set(p.finals()))
        parts = sorted({partition_for(k[0], p.partitions) for k in missing})
        raise AssertionError(
            f"{len(missing)} final hours missing, e.g. {missing[:4]}, "
            f"in partitions {parts}; see the worker logs in {p.tmp}"
        ) from None
    wait_for(
        lambda: len(event_ids(p)) >= len(alert_ids),
        timeout=30,
        what=f"{len(alert_ids)} alert events",
    )
    time.sleep(2)
    assert p.finals() == expected
    got = event_ids(p)
    assert len(got) == len(set(got))
    assert set(got) == alert_ids
    alerts = p.scalar("SELECT count(DISTINCT alert_id) FROM alert_events")
    assert p.scalar("SELECT count(*) FROM alerts") == alerts


@pytest.fixture
def pipeline(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, test_id: str, tmp_path: Path
) -> Iterator[Pipeline]:
    import_thresholds(db, kafka, BANDS)
    p = Pipeline(stack, kafka, db, test_id, tmp_path)
    yield p
    p.close()


def test_sigkill_of_the_worker_mid_run(pipeline: Pipeline, data: tuple) -> None:  # type: ignore[type-arg]
    readings, expected, alert_ids = data
    assert alert_ids, "the data crosses the bands"
    worker = pipeline.worker()
    pipeline.wait_ready()
    pipeline.send(readings)
    wait_for(
        lambda: pipeline.scalar("SELECT count(*) FROM hourly_aggregates") >= 10,
        timeout=60,
        what="the worker under way",
    )
    worker.kill()
    assert len(pipeline.finals()) < len(expected), "the kill must land mid-run"
    pipeline.worker()
    check(pipeline, expected, alert_ids)


def test_two_workers_give_the_same_results_as_one(pipeline: Pipeline, data: tuple) -> None:  # type: ignore[type-arg]
    readings, expected, alert_ids = data
    pipeline.worker()
    pipeline.worker()
    pipeline.wait_ready()
    pipeline.send(readings)
    check(pipeline, expected, alert_ids)


@pytest.mark.slow
def test_a_database_outage_of_30_seconds_loses_nothing(
    stack: Settings,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    test_id: str,
    tmp_path: Path,
    data: tuple,  # type: ignore[type-arg]
) -> None:
    readings, expected, alert_ids = data
    import_thresholds(db, kafka, BANDS)
    info = psycopg.conninfo.conninfo_to_dict(db.url)
    proxy = TcpProxy(str(info.get("host", "127.0.0.1")), int(str(info.get("port", 5432))))
    via_proxy = db.model_copy(
        update={"url": psycopg.conninfo.make_conninfo(db.url, host="127.0.0.1", port=proxy.port)}
    )
    p = Pipeline(stack, kafka, via_proxy, test_id, tmp_path)
    try:
        p.worker()
        p.wait_ready()
        half = len(readings) // 2
        p.send(readings[:half])
        wait_for(
            lambda: p.scalar("SELECT count(*) FROM hourly_aggregates") >= 10,
            timeout=60,
            what="rows before the outage",
        )
        proxy.cut()
        p.send(readings[half:])  # the plant keeps sending while the database is away
        time.sleep(30)
        proxy.restore()
        check(p, expected, alert_ids)
        assert (
            p.registry.get_sample_value(
                "iotmon_stage_infrastructure_failures_total", {"stage": "sink.aggregates"}
            )
            or 0
        ) > 0
    finally:
        p.close()
        proxy.close()


def test_values_are_exact_decimals(pipeline: Pipeline) -> None:
    """Averages are sum/count of raw readings, rounded half away from zero at 2 decimals."""
    from schemas.readings import Reading  # noqa: PLC0415

    start = hours_ago(3)
    values = ["20.005", "20.00", "20.00"]  # avg 20.001666… -> 20.00; max 20.005 -> 20.01
    rs = [
        Reading(
            sensor_id="TEMPIOT-X001",
            loc_id="X001",
            capture_dt=start.replace(minute=i),
            temperature=Decimal(v),
            humidity=Decimal("50.125"),
            pcv_temperature=Decimal("30.135"),
            source="kafka",
            received_at=start,
        )
        for i, v in enumerate(values)
    ]
    pipeline.worker()
    pipeline.wait_ready()
    pipeline.send(rs)
    wait_for(lambda: len(pipeline.finals("TEMPIOT-X001")) == 1, timeout=30, what="the final")
    (row,) = pipeline.finals("TEMPIOT-X001").values()
    assert (row["temperature_max"], row["temperature_avg"]) == ("20.01", "20.00")
    assert row["humidity_avg"] == "50.13"
