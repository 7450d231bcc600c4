from __future__ import annotations

from decimal import Decimal

import pytest

from stream_apps.ingest.perceived import (
    kma_summer_apparent,
    perceived_temperature,
    wet_bulb_stull,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("t", "rh", "tw", "at"),
    [
        (22.1, 77.7, 19.246, 23.849),
        (20, 50, 13.699, 19.801),
        (30, 50, 22.297, 29.534),
        (32, 70, 27.459, 33.323),
        (35, 60, 28.488, 35.462),
    ],
)
def test_reference_table(t: float, rh: float, tw: float, at: float) -> None:
    assert wet_bulb_stull(t, rh) == pytest.approx(tw, abs=0.001)
    assert kma_summer_apparent(t, rh) == pytest.approx(at, abs=0.001)


def test_original_readme_sample_reports_23_8() -> None:
    assert perceived_temperature(Decimal("22.1"), Decimal("77.7")) == Decimal("23.8")


def test_not_the_us_heat_index() -> None:
    # The Rothfusz heat index gives about 45 °C here; the KMA index 35.5.
    assert perceived_temperature(Decimal(35), Decimal(60)) == Decimal("35.5")


@pytest.mark.parametrize(("t", "rh"), [(22, 3), (22, 100), (-25, 50), (55, 50)])
def test_outside_the_fit_no_value_is_invented(t: int, rh: int) -> None:
    assert perceived_temperature(Decimal(t), Decimal(rh)) is None
