from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from schemas.alerts import AlertTransition as T
from schemas.common import Status
from schemas.thresholds import Threshold
from stream_apps.processing.lifecycle import MetricAlertState, Subject, step
from stream_apps.processing.rules import ThresholdIndex

pytestmark = pytest.mark.unit

T0 = datetime(2025, 8, 1, 5, 0, tzinfo=UTC)
SUBJECT = Subject("TEMPIOT-A011", "A011", "pcv_temperature")


def bands(hold: int = 60, clear: int = 60, margin: str = "0.5") -> ThresholdIndex:
    common = {
        "hold_seconds": hold,
        "clear_seconds": clear,
        "clear_margin": Decimal(margin),
        "upd_dt": T0,
        "threshold_type": "pcv_temperature",
    }
    return ThresholdIndex(
        [
            Threshold(
                threshold_id=1,
                level="green",
                min_value=Decimal("0"),
                max_value=Decimal("30.90"),
                **common,
            ),
            Threshold(
                threshold_id=2,
                level="yellow",
                min_value=Decimal("31.00"),
                max_value=Decimal("32.90"),
                **common,
            ),
            Threshold(threshold_id=3, level="orange", min_value=Decimal("33.00"), **common),
        ]
    )


def run(values: list[str], index: ThresholdIndex, every: int = 10):
    state = MetricAlertState()
    events = []
    for i, v in enumerate(values):
        value = Decimal(v)
        at = T0 + timedelta(seconds=every * i)
        events += step(
            state, SUBJECT, index.evaluate("pcv_temperature", value, None), value, at, at
        )
    return state, events


def test_hovering_at_a_band_edge_raises_once_escalates_and_resolves_without_flapping() -> None:
    values = (
        ["30.0"] * 3
        + ["31.1", "31.3", "31.0", "31.2", "31.1", "31.4", "31.2"]  # warning held 60 s
        + ["30.9", "31.1", "30.7", "31.0", "30.6"] * 3  # hovering at the edge, within margin
        + ["33.2"] * 8  # critical, 80 s
        + ["32.95", "33.0", "32.9", "33.1"]  # hovering at the critical edge
        + ["30.0"] * 8  # back to normal, 80 s
    )
    state, events = run(values, bands())
    assert [e.transition for e in events] == [T.RAISED, T.ESCALATED, T.RESOLVED]
    raised, escalated, resolved = events
    assert raised.level == Status.WARNING and raised.threshold_id == 2
    assert raised.reading_time == T0 + timedelta(seconds=30 + 60)  # held 60 s from 31.1
    assert escalated.level == Status.CRITICAL and escalated.threshold_id == 3
    assert resolved.level == Status.CRITICAL
    assert len({e.alert_id for e in events}) == 1
    assert len({e.event_id for e in events}) == 3
    assert state.alert_id is None


def test_dipping_below_the_band_restarts_the_hold() -> None:
    _, events = run(["30"] + ["31.1", "30.9", "31.2", "30.8"] * 6, bands(hold=30))
    assert events == []


def test_a_short_spike_does_not_raise() -> None:
    _, events = run(["30"] * 3 + ["34"] * 5 + ["30"] * 5, bands(hold=60))
    assert events == []


def test_zero_hold_raises_immediately_and_deescalates() -> None:
    _, events = run(
        ["34", "34", "32", "32", "32", "32", "32", "32", "32", "30"],
        bands(hold=0, clear=30, margin="0"),
    )
    assert [(e.transition, e.level) for e in events] == [
        (T.RAISED, Status.CRITICAL),
        (T.DEESCALATED, Status.WARNING),
    ]


def test_same_input_gives_the_same_ids() -> None:
    values = ["30"] + ["34"] * 10 + ["30"] * 10
    _, first = run(values, bands())
    _, second = run(values, bands())
    assert [e.event_id for e in first] == [e.event_id for e in second]
