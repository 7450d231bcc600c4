"""Which buckets a change asks the rollups to refresh (iotmon/db/rollups.py, the aggregates
sink): every bucket that holds a changed hour, never the current day or month (they stay
real-time), whole months for the dailies so that the monthlies read complete days."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotmon.db.rollups import windows
from stream_apps.sinks.aggregates import earlier_days
from tests.integration.test_rollups import hourly

pytestmark = pytest.mark.unit

instants = st.datetimes(
    min_value=datetime(2001, 1, 1), max_value=datetime(2099, 1, 1), timezones=st.just(UTC)
)


def month_of(at: datetime) -> datetime:
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@given(
    instants,
    st.timedeltas(timedelta(0), timedelta(days=400)),
    st.timedeltas(timedelta(0), timedelta(days=400)),
)
def test_a_window_holds_every_complete_bucket_of_the_change_and_nothing_current(
    start: datetime, length: timedelta, until_now: timedelta
) -> None:
    end = start + length
    now = end + until_now
    (d_from, d_to), monthly = windows(start, end, now)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    assert d_from == month_of(start)
    assert d_to <= today
    # Every day bucket of the change that is complete (before today) is inside the window.
    day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    assert d_from <= day
    last_day = end.replace(hour=0, minute=0, second=0, microsecond=0)
    assert d_to >= min(last_day + timedelta(days=1), today)
    if monthly is None:
        assert month_of(start) >= month_of(now)
    else:
        m_from, m_to = monthly
        assert m_from == month_of(start) < m_to <= month_of(now)
        assert m_to >= min(month_of(end + timedelta(days=31 - end.day + 1)), month_of(now))
        # The dailies cover the whole months the monthlies are refreshed from.
        assert d_from <= m_from and d_to >= m_to


def test_unbounded_means_everything_before_the_current_day_and_month() -> None:
    now = datetime(2026, 12, 4, 21, 5, tzinfo=UTC)
    assert windows(None, None, now) == (
        (None, datetime(2026, 12, 4, tzinfo=UTC)),
        (None, datetime(2026, 12, 1, tzinfo=UTC)),
    )


def test_only_hours_of_earlier_utc_days_ask_for_a_refresh() -> None:
    rng = random.Random(1)
    now = datetime(2026, 12, 4, 0, 20, tzinfo=UTC)
    today = [hourly("S", "L", "Asia/Seoul", datetime(2026, 12, 4, 0, tzinfo=UTC), rng)]
    assert earlier_days(today, now) is None
    yesterday = [
        hourly("S", "L", "Asia/Seoul", datetime(2026, 12, 3, h, tzinfo=UTC), rng) for h in (5, 23)
    ]
    assert earlier_days(today + yesterday, now) == (
        datetime(2026, 12, 3, 5, tzinfo=UTC),
        datetime(2026, 12, 3, 23, tzinfo=UTC),
    )
