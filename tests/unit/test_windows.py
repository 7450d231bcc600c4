"""Hourly windows: the local hour of an instant, and duplicates within an hour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from stream_apps.processing.windows import SEAL_AT, HourWindow, local_hour
from tests.ground_truth import one_reading

pytestmark = pytest.mark.unit


def reference(capture: datetime, zone: str) -> tuple[datetime, str, str]:
    start = capture.astimezone(ZoneInfo(zone)).replace(minute=0, second=0, microsecond=0)
    return start.astimezone(UTC), f"{start:%Y%m%d}", f"{start:%H}"


@pytest.mark.parametrize(
    "zone",
    # whole hours; half and quarter hours; a DST change on the hour; a 30-minute DST
    # change (Lord Howe); a zone that moved from a half-hour to a whole-hour offset
    # (Asia/Pyongyang, 2018-05-04).
    [
        "Asia/Seoul",
        "UTC",
        "Asia/Kolkata",
        "Asia/Kathmandu",
        "Europe/Berlin",
        "America/St_Johns",
        "Australia/Lord_Howe",
        "Asia/Pyongyang",
    ],
)
def test_local_hour_agrees_with_the_zone_database(zone: str) -> None:
    # Every 7 minutes and 13 seconds through periods with offset changes, in an order that
    # visits the same UTC hour from both sides of a change.
    starts = [
        datetime(2025, 3, 29, tzinfo=UTC),
        datetime(2025, 10, 25, tzinfo=UTC),
        datetime(2025, 4, 5, tzinfo=UTC),
        datetime(2018, 5, 3, tzinfo=UTC),
    ]
    for start in starts:
        instants = [start + timedelta(seconds=433 * i) for i in range(600)]
        for capture in instants[::2] + instants[1::2]:
            assert local_hour(capture, zone) == reference(capture, zone), capture


def test_readings_a_millisecond_apart_are_two_readings() -> None:
    """The capture instants an hour has counted are kept in whole milliseconds; computing
    them through floating-point seconds once mapped x.000 s and x.001 s to the same one."""
    hour = datetime(2025, 9, 12, 5, tzinfo=UTC)
    window = HourWindow(hour_start=hour, ymd="20250912", hour="14")
    for ms in (1000, 1001, 1002, 3_599_999):
        assert window.add(one_reading(hour + timedelta(milliseconds=ms), hour))
    assert not window.add(one_reading(hour + timedelta(milliseconds=1001), hour))
    assert window.temperature.count == 4
    assert window.pcv_temperature.count == 0


def test_sealed_instants_are_looked_up_only_inside_their_ranges() -> None:
    hour = datetime(2025, 9, 12, 5, tzinfo=UTC)
    window = HourWindow(hour_start=hour, ymd="20250912", hour="14")
    for second in range(SEAL_AT):
        assert window.add(one_reading(hour + timedelta(seconds=second), hour))
    assert window.seal() == (0, [second * 1000 for second in range(SEAL_AT)])
    assert window.seen_ms == set() and window.chunks == [(0, (SEAL_AT - 1) * 1000)]
    assert window.seal() is None  # nothing due
    chunk = frozenset(second * 1000 for second in range(SEAL_AT))
    asked: list[tuple[str, datetime, int]] = []

    def lookup(sid: str, hour_start: datetime, index: int) -> frozenset[int]:
        asked.append((sid, hour_start, index))
        return chunk

    newer = one_reading(hour + timedelta(seconds=SEAL_AT + 5), hour)
    assert window.add(newer)  # past every chunk: no lookup needed, none given
    duplicate = one_reading(hour + timedelta(seconds=3), hour)
    with pytest.raises(ValueError, match="sealed chunks"):
        window.add(duplicate)
    assert not window.add(duplicate, lookup)
    assert asked == [(duplicate.sensor_id, hour, 0)]
    between = one_reading(hour + timedelta(seconds=3, milliseconds=500), hour)
    assert window.add(between, lookup)  # inside the range, not in the chunk: a new reading
    assert not window.add(between, lookup)  # and now among the unsealed ones
    assert window.temperature.count == SEAL_AT + 2
