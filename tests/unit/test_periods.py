from __future__ import annotations

import pytest

from api.periods import Period, PeriodError, parse_period

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        ("2024", "2024", Period("20240101", "20241231", "month")),
        ("202401", "202403", Period("20240101", "20240331", "day")),
        ("202401", "202404", Period("20240101", "20240430", "day")),
        ("202401", "202405", Period("20240101", "20240531", "month")),
        ("20240922", "20240923", Period("20240922", "20240923", "hour")),
        ("202402", "202402", Period("20240201", "20240229", "day")),
        ("20240101", "20240401", Period("20240101", "20240401", "hour")),  # 92 days
        ("2015", "2024", Period("20150101", "20241231", "month")),  # 10 years
    ],
)
def test_the_original_bucket_rules(start: str, end: str, expected: Period) -> None:
    assert parse_period(start, end) == expected


@pytest.mark.parametrize(
    ("start", "end", "names"),
    [
        ("2024-01", "202402", "start_date"),
        ("202401", "20240", "end_date"),
        ("20240230", "20240301", "start_date"),
        ("202413", "202413", "start_date"),
        ("202403", "202401", "before"),
        ("2024", "202401", "same form"),
        ("1999", "1999", "outside"),
        ("20000101", "21001231", "hourly buckets cover at most 92 days"),
        ("20240101", "20240402", "spans 93 days"),
        ("2000", "2100", "at most 10"),
        ("200001", "201012", "spans 11 years"),
    ],
)
def test_bad_dates_name_the_parameter(start: str, end: str, names: str) -> None:
    with pytest.raises(PeriodError, match=names):
        parse_period(start, end)
