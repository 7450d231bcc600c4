from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from schemas.common import Status
from schemas.master import Location
from schemas.thresholds import Threshold
from stream_apps.processing.rules import ThresholdIndex

pytestmark = pytest.mark.unit

T = datetime(2025, 1, 1, tzinfo=UTC)


def band(
    tid: int,
    level: str,
    lo: str | None,
    hi: str | None,
    metric: str = "pcv_temperature",
    **scope: object,
) -> Threshold:
    return Threshold(
        threshold_id=tid,
        threshold_type=metric,
        level=level,
        min_value=None if lo is None else Decimal(lo),
        max_value=None if hi is None else Decimal(hi),
        upd_dt=T,
        **scope,
    )


PRODUCTION = [
    band(1, "green", "0.00", "30.90"),
    band(2, "yellow", "31.00", "32.90"),
    band(3, "orange", "33.00", None),
]
PLACE = Location(loc_id="A011", factory="SinPyeong", building="MX-1", floor=1)


@pytest.mark.parametrize(
    ("value", "status"),
    [
        ("30.90", Status.NORMAL),
        ("31.00", Status.WARNING),
        ("32.90", Status.WARNING),
        ("33.00", Status.CRITICAL),
        ("45", Status.CRITICAL),
        ("30.95", Status.NORMAL),
        ("-1", Status.NORMAL),
    ],
)
def test_the_original_production_bands(value: str, status: Status) -> None:
    assert (
        ThresholdIndex(PRODUCTION).evaluate("pcv_temperature", Decimal(value), PLACE).status
        == status
    )


def test_a_metric_without_thresholds_has_no_status() -> None:
    result = ThresholdIndex(PRODUCTION).evaluate("humidity", Decimal("77.7"), PLACE)
    assert result.status is None and result.band is None


def test_highest_priority_wins_when_bands_overlap() -> None:
    index = ThresholdIndex(
        [band(1, "yellow", "30", None), band(2, "red", "35", None), band(3, "info", None, None)]
    )
    assert index.evaluate("pcv_temperature", Decimal("36"), PLACE).band.threshold_id == 2  # type: ignore[union-attr]
    assert index.evaluate("pcv_temperature", Decimal("31"), PLACE).status == Status.WARNING
    assert index.evaluate("pcv_temperature", Decimal("10"), PLACE).status == Status.NORMAL


def test_the_most_specific_scope_with_bands_wins() -> None:
    index = ThresholdIndex(
        [
            *PRODUCTION,
            band(10, "red", "28", None, factory="SinPyeong"),
            band(11, "red", "25", None, factory="SinPyeong", building="MX-1", floor=1),
            band(12, "red", "40", None, loc_id="B999"),
        ]
    )
    assert index.evaluate("pcv_temperature", Decimal("26"), PLACE).status == Status.CRITICAL
    other_floor = PLACE.model_copy(update={"floor": 2})
    assert index.evaluate("pcv_temperature", Decimal("26"), other_floor).status == Status.NORMAL
    assert index.evaluate("pcv_temperature", Decimal("29"), other_floor).status == Status.CRITICAL
    elsewhere = Location(loc_id="C001", factory="JangNim")
    assert index.evaluate("pcv_temperature", Decimal("29"), elsewhere).status == Status.NORMAL
    assert index.evaluate("pcv_temperature", Decimal("29"), None).status == Status.NORMAL


def test_among_equal_levels_the_narrower_band_then_the_lower_id_decides() -> None:
    bands = [
        band(7, "red", "30", None),
        band(5, "red", "30", "40"),
        band(9, "red", "32", "36"),
        band(3, "red", "32", "36"),
    ]
    for ordering in (bands, bands[::-1], bands[1:] + bands[:1]):
        index = ThresholdIndex(ordering)
        decided = [
            index.evaluate("pcv_temperature", Decimal(v), PLACE).band.threshold_id  # type: ignore[union-attr]
            for v in ("33", "38", "45")
        ]
        assert decided == [3, 5, 7]
