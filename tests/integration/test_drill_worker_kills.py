"""Drill: SIGKILL the worker five times during a 200,000-reading run.

The final hourly rows must equal the ground truth computed from the readings alone. The
alert events in the database must be exactly the expected ones, none of them twice, and
every alert row must be derived from them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.thresholds import import_thresholds
from tests.ground_truth import expected_alert_event_ids, expected_hourly, hours_ago, make_readings
from tests.helpers import wait_for
from tests.integration.test_worker_faults import BANDS, band_models, check
from tests.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = 5


@pytest.fixture
def pipeline(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, test_id: str, tmp_path: Path
) -> Iterator[Pipeline]:
    import_thresholds(db, kafka, BANDS)
    p = Pipeline(stack, kafka, db, test_id, tmp_path)
    yield p
    p.close()


def counted(p: Pipeline) -> int:
    return int(p.scalar("SELECT coalesce(sum(temperature_count), 0) FROM hourly_aggregates"))


def test_five_sigkills_during_200k_readings(pipeline: Pipeline) -> None:
    # 100 sensors over 4 hours, one reading every 7 s each (about 205,000, 5 % duplicates).
    readings = make_readings(100, 4, hours_ago(5), every_s=7, duplicates=0.05, shuffle_s=120)
    assert len(readings) >= 200_000
    expected = expected_hourly(readings)
    alert_ids = expected_alert_event_ids(readings, band_models())
    assert alert_ids
    worker = pipeline.worker()
    pipeline.wait_ready()
    pipeline.send(readings)
    for kill in range(KILLS):
        goal = counted(pipeline) + 5_000

        def progressed(goal: int = goal) -> bool:
            return counted(pipeline) > goal

        wait_for(progressed, timeout=120, what=f"progress before kill {kill + 1}")
        worker.kill()
        worker = pipeline.worker()
    assert counted(pipeline) < len(readings), "every kill must land mid-run"
    check(pipeline, expected, alert_ids, timeout=600)
