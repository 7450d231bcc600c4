"""Hourly windows by event time, in the factory's local hours.  Plain functions, exact decimals.

An hour is identified by the instant its local hour starts (``hour_start``); ``ymd``/``hour``
name it in the factory's zone.  An hour closes when the partition's watermark has passed its
end by the grace period; readings of a closed hour are late.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from zoneinfo import ZoneInfo

from schemas.aggregates import HourlyAggregate, MetricAggregate
from schemas.readings import Reading

_HOUR = timedelta(hours=1)
_MILLISECOND = timedelta(milliseconds=1)
_CENT = Decimal("0.01")

# Capture instants per sealed chunk (see HourWindow).  A window then carries at most this
# many instants, plus two numbers per chunk: about 1.5 KB at the end of an hour of one
# reading per second, where all 3,600 instants made 28 KB.
SEAL_AT = 128

# The instants of one sealed chunk: (sensor id, hour start, chunk index) -> its instants,
# empty if the chunk cannot be found.
ChunkLookup = Callable[[str, datetime, int], Collection[int]]


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


_HOURS: dict[tuple[int, str], tuple[datetime, str, str] | None] = {}  # None: not cacheable
_HOURS_MAX = 100_000


def local_hour(capture_dt: datetime, tz_name: str) -> tuple[datetime, str, str]:
    """(hour_start as a UTC instant, ymd, hh) of the local hour that contains ``capture_dt``.

    Zones whose offset is not a whole number of hours are handled: the local hour is
    truncated in local time, not in UTC.
    """
    epoch_hour = int(capture_dt.timestamp() // 3600)
    key = (epoch_hour, tz_name)
    found = _HOURS.get(key, ())
    if found:
        return found
    zone = _zone(tz_name)
    local = capture_dt.astimezone(zone)
    start = local.replace(minute=0, second=0, microsecond=0)
    answer = start.astimezone(UTC), f"{start:%Y%m%d}", f"{start:%H}"
    if found is None:  # checked before: this UTC hour holds two local hours
        return answer
    # The answer holds for the whole UTC hour when the zone's offset is a whole number of
    # hours at both its ends (no change of offset, or a change on the hour, inside it).
    # Otherwise remember that, so the check is not repeated per reading.
    first = datetime.fromtimestamp(epoch_hour * 3600, UTC).astimezone(zone).utcoffset()
    last = datetime.fromtimestamp(epoch_hour * 3600 + 3599, UTC).astimezone(zone).utcoffset()
    if len(_HOURS) >= _HOURS_MAX:
        _HOURS.clear()
    _HOURS[key] = answer if first == last and first is not None and not first % _HOUR else None
    return answer


def round2(value: Decimal) -> Decimal:
    """Two decimals, half away from zero (as PostgreSQL's round(numeric, 2))."""
    return value.quantize(_CENT, ROUND_HALF_UP)


# Windows and alert states are plain dataclasses, not pydantic models: they are updated
# several times per reading, and a pydantic attribute assignment costs about ten times a
# plain one.  Pydantic still validates and serialises them as fields of the sensor state.
@dataclass
class MetricWindow:
    count: int = 0
    sum: Decimal = Decimal(0)
    min: Decimal | None = None
    max: Decimal | None = None

    def add(self, value: Decimal) -> None:
        self.count += 1
        self.sum += value
        low, high = self.min, self.max
        if low is None or value < low:
            self.min = value
        if high is None or value > high:
            self.max = value

    def snapshot(self) -> MetricAggregate | None:
        if self.count == 0 or self.min is None or self.max is None:
            return None
        return MetricAggregate(count=self.count, sum=self.sum, min=self.min, max=self.max)


@dataclass
class HourWindow:
    """One sensor-hour: the aggregates and the capture instants already counted (duplicates
    of a reading, same sensor and capture time, are counted once).

    The instants are in whole milliseconds after ``hour_start``.  The window is written
    whole with its sensor's state after every record, so it keeps only the newest of them
    (``seen_ms``): every :data:`SEAL_AT` instants are sealed into a chunk, written once to
    a table of their own (:meth:`seal`), and the window remembers only each chunk's first
    and last instant (``chunks``, by index).  A reading inside a chunk's range is looked up
    in that chunk, which in-order data never needs.
    """

    hour_start: datetime
    ymd: str
    hour: str
    temperature: MetricWindow = field(default_factory=MetricWindow)
    humidity: MetricWindow = field(default_factory=MetricWindow)
    pcv_temperature: MetricWindow = field(default_factory=MetricWindow)
    seen_ms: set[int] = field(default_factory=set)  # capture times not sealed yet
    chunks: list[tuple[int, int]] = field(default_factory=list)  # sealed: (first, last) ms
    # A final was emitted by the idle clock; the hour stays open to the data until the
    # partition's own watermark closes it, and whatever still arrives revises that final.
    final_sent: bool = False

    def add(self, reading: Reading, chunk: ChunkLookup | None = None) -> bool:
        """Count the reading; False (and no change) if it was counted before.  ``chunk``
        finds the instants of a sealed chunk (none sealed: not needed)."""
        offset = (reading.capture_dt - self.hour_start) // _MILLISECOND
        seen = self.seen_ms
        if offset in seen:
            return False
        for index, (first, last) in enumerate(self.chunks):
            if first <= offset <= last:
                if chunk is None:
                    raise ValueError("the window has sealed chunks but no way to read them")
                if offset in chunk(reading.sensor_id, self.hour_start, index):
                    return False
        seen.add(offset)
        self.temperature.add(reading.temperature)
        self.humidity.add(reading.humidity)
        if reading.pcv_temperature is not None:
            self.pcv_temperature.add(reading.pcv_temperature)
        return True

    def seal(self, at: int = SEAL_AT) -> tuple[int, list[int]] | None:
        """If ``at`` instants are unsealed: seal them, and return the new chunk's index and
        its instants (sorted) for the caller to store."""
        if len(self.seen_ms) < at:
            return None
        instants = sorted(self.seen_ms)
        self.chunks.append((instants[0], instants[-1]))
        self.seen_ms = set()
        return len(self.chunks) - 1, instants

    def aggregate(
        self, sensor_id: str, loc_id: str, *, final: bool, now: datetime
    ) -> HourlyAggregate:
        return HourlyAggregate(
            sensor_id=sensor_id,
            loc_id=loc_id,
            hour_start=self.hour_start,
            ymd=self.ymd,
            hour=self.hour,
            temperature=self.temperature.snapshot(),
            humidity=self.humidity.snapshot(),
            pcv_temperature=self.pcv_temperature.snapshot(),
            is_final=final,
            updated_at=now,
        )


@dataclass(frozen=True)
class WindowPolicy:
    grace: timedelta = timedelta(minutes=10)
    timezone: str = "Asia/Seoul"

    def closes_at(self, hour_start: datetime) -> datetime:
        """The watermark at which the hour closes."""
        return hour_start + _HOUR + self.grace


def is_late(hour_start: datetime, watermark: datetime | None, policy: WindowPolicy) -> bool:
    return watermark is not None and policy.closes_at(hour_start) <= watermark


def average(window: MetricAggregate) -> Decimal:
    """sum / count of raw readings, at two decimals half away from zero."""
    return round2(window.sum / window.count)
