"""Date ranges of the aggregation endpoints: `yyyy | yyyyMM | yyyyMMdd`, both ends
inclusive, and the original system's bucket rules.  Plain functions."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date
from typing import Literal

Bucket = Literal["hour", "day", "month"]
# The largest ranges one request may ask for (a 422 names them): every bucket is a row of
# the answer, and a century of hours per location is not a question but a load.
MAX_HOURLY_DAYS = 92
MAX_YEARS = 10


class PeriodError(ValueError):
    """A bad date parameter; the message names it."""


@dataclass(frozen=True)
class Period:
    first_ymd: str  # inclusive, local dates
    last_ymd: str
    bucket: Bucket


def _parse(name: str, value: str, *, end: bool) -> tuple[str, date]:
    text = value.strip()
    if not text.isdigit() or len(text) not in (4, 6, 8):
        raise PeriodError(f"{name} must be yyyy, yyyyMM or yyyyMMdd, got {value[:20]!r}")
    kind = {4: "year", 6: "month", 8: "day"}[len(text)]
    try:
        year = int(text[:4])
        month = int(text[4:6]) if len(text) >= 6 else (12 if end else 1)
        if len(text) == 8:
            day = int(text[6:8])
        else:
            day = calendar.monthrange(year, month)[1] if end else 1
        when = date(year, month, day)
    except (ValueError, calendar.IllegalMonthError):
        raise PeriodError(f"{name} {value!r} is not a date") from None
    if year < 2000 or year > 2100:
        raise PeriodError(f"{name} {value!r} is outside 2000..2100")
    return kind, when


def parse_period(start_date: str, end_date: str) -> Period:
    """The inclusive local-date range and the bucket; PeriodError naming the parameter."""
    start_kind, first = _parse("start_date", start_date, end=False)
    end_kind, last = _parse("end_date", end_date, end=True)
    if start_kind != end_kind:
        raise PeriodError(
            f"start_date and end_date must have the same form (got {start_kind} and {end_kind})"
        )
    if last < first:
        raise PeriodError(f"end_date {end_date} is before start_date {start_date}")
    if start_kind == "day":
        days = (last - first).days + 1
        if days > MAX_HOURLY_DAYS:
            raise PeriodError(
                f"start_date..end_date spans {days} days; hourly buckets cover at most"
                f" {MAX_HOURLY_DAYS} days (yyyyMM gives daily or monthly buckets)"
            )
        bucket: Bucket = "hour"
    elif start_kind == "year":
        bucket = "month"
    else:
        months = (last.year - first.year) * 12 + last.month - first.month
        bucket = "month" if months >= 4 else "day"
    years = last.year - first.year + 1
    if years > MAX_YEARS:
        raise PeriodError(
            f"start_date..end_date spans {years} years; a request covers at most {MAX_YEARS}"
        )
    return Period(f"{first:%Y%m%d}", f"{last:%Y%m%d}", bucket)
