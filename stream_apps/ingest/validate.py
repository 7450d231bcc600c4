"""Validation of incoming readings: bytes in, readings or reasoned rejections out.

Plain functions, no I/O: the ingest stage calls them for every raw record, whichever way
(MQTT bridge or a gateway's own Kafka producer) the record came in.

Contract: for any input whatsoever, :func:`decode`, :func:`validate_item` and
:func:`validate_payload` return; they never raise.  Every result is an :class:`Accepted` or a
:class:`Rejection` carrying a :class:`DeadLetterReason` and a human-readable detail, so that
one bad record is dead-lettered instead of stopping (and, on restart, re-reading) the stage.
The work per record is bounded: the payload's size, the nesting of its JSON
(:func:`stream_apps.ingest.jsondoc.loads`), the length of a batch and of every string parsed.

What is accepted (docs/wire-format.md says the same for gateway authors):

- The payload: strict UTF-8 JSON, one object or an array (a batch) of at most
  ``Limits.max_batch_items`` items; a key repeated in any object, nesting deeper than
  :data:`MAX_DEPTH` or a longer batch rejects the whole payload once.
- Numbers: a JSON number, or a decimal string of ASCII digits ``[-+]?[0-9]+(.[0-9]+)?``
  with optional surrounding whitespace, at most 64 characters.  Strings with an exponent
  (``"1e2"``) or other digits (``"٢٥"``) are ``wrong_type``; ``"NaN"``/``"Infinity"`` and
  the JSON literals ``NaN``/``Infinity``, or a number beyond a double (``1e999``), are
  ``not_finite``; ``true``/``false`` are ``wrong_type``; ``null`` is a missing value.  More
  than two decimals are rounded half up to two; negative zero reads as zero.
- ``capture_dt``: ASCII ``YYYY-MM-DD``, ``T`` or a space, ``HH:MM[:SS[.fraction]]`` with
  1 to 9 fraction digits (``.`` or ``,``; digits beyond microseconds are dropped), then
  ``Z``, an offset ``±HH[:MM]`` / ``±HHMM`` of at most 14 hours, or nothing; at most 64
  characters.  Dates that do not exist (2025-02-30), hour 24 and leap seconds
  (``23:59:60``) are ``wrong_type``; a time that is outside the calendar once converted to
  UTC (``0001-01-01T00:00:00+14:00``) is ``stale_timestamp`` or ``future_timestamp``.
- A ``capture_dt`` without an offset is a wall-clock time in the time zone of the sensor's
  location (``Limits.default_timezone`` for a sensor registered on the fly).  Where that
  zone has daylight saving time, a wall time that occurs twice (clocks set back) is read as
  the earlier of its two instants, with the offset in force before the change; a wall time
  that never occurs (clocks set forward) is also read with the offset in force before the
  change, which lands after the gap.  Europe/Berlin: ``2025-10-26 02:30`` is 00:30 UTC
  (+02:00), ``2025-03-30 02:30`` is 01:30 UTC (+01:00, 03:30 local summer time).  This is
  ``zoneinfo`` with ``fold=0``.
- ``sensor_id``: the whole string matches :data:`schemas.master.SENSOR_ID_PATTERN` (a
  trailing newline does not pass).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import MINYEAR, UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from schemas.deadletters import DeadLetterReason
from schemas.master import SENSOR_ID_PATTERN, SensorRecord, loc_id_by_convention
from schemas.readings import Reading, Source
from stream_apps.ingest import jsondoc
from stream_apps.ingest.jsondoc import preview
from stream_apps.ingest.perceived import perceived_temperature

R = DeadLetterReason
_HUNDREDTH = Decimal("0.01")
_NUMBER_MAX = 64
# Decimal strings are at most _NUMBER_MAX characters, so this precision rounds any of them
# exactly; the thread's default context (28 digits) would raise for a 27-digit integer part.
_ROUNDING = Context(prec=2 * _NUMBER_MAX, rounding=ROUND_HALF_UP)
_CAPTURE_DT_MAX = 64
_SENSOR_ID_MAX = 64
# A reading is an object and a batch an array of objects (2 deep); the rest is headroom for
# extra fields, which are ignored.
MAX_DEPTH = 32
# Matched with fullmatch: the pattern's "$" would let a trailing newline through.
_SENSOR_ID = re.compile(SENSOR_ID_PATTERN)
_DECIMAL = re.compile(r"\s*[-+]?[0-9]+(?:\.[0-9]+)?\s*", re.ASCII)
_NON_FINITE = re.compile(r"\s*[-+]?(?:nan|snan|inf|infinity)\s*", re.ASCII | re.IGNORECASE)
# The offset is at most 14 hours (no zone is further from UTC): checked here, where it costs
# nothing, rather than on the parsed time.
_CAPTURE_DT = re.compile(
    r"\s*[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]{1,9})?)?"
    r"(?:Z|[-+](?:0[0-9]|1[0-3])(?::?[0-5][0-9])?|[-+]14(?::?00)?)?\s*",
    re.ASCII,
)

# The original system's row format: t1/t2/t3 for temperature/humidity/pcv_temperature.
_ORIGINAL_KEYS = {"t1": "temperature", "t2": "humidity", "t3": "pcv_temperature"}


@dataclass(frozen=True)
class Limits:
    temperature: tuple[float, float] = (-40.0, 125.0)
    humidity: tuple[float, float] = (0.0, 100.0)
    max_future: timedelta = timedelta(minutes=5)
    max_age: timedelta = timedelta(days=7)
    max_payload_bytes: int = 1024 * 1024
    max_batch_items: int = 1000
    default_timezone: str = "Asia/Seoul"
    auto_register: bool = False


@dataclass(frozen=True)
class Rejection:
    reason: DeadLetterReason
    detail: str
    index: int | None = None
    sensor_id: str | None = None


@dataclass(frozen=True)
class Accepted:
    reading: Reading
    auto_registered: bool = False


Lookup = Callable[[str], SensorRecord | None]


class _Invalid(Exception):
    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def decode(raw: bytes | None, limits: Limits) -> list[Any] | Rejection:
    """The items of a payload: one value, or each element of a JSON array (a batch).

    Rejects the whole payload when it is empty, larger than ``limits.max_payload_bytes``, not
    strict JSON (see :func:`stream_apps.ingest.jsondoc.loads`: duplicate keys, nesting beyond
    :data:`MAX_DEPTH`, ...) or an array of more than ``limits.max_batch_items`` items.
    """
    if not raw:
        return Rejection(R.EMPTY_PAYLOAD, "the payload is empty")
    if len(raw) > limits.max_payload_bytes:
        return Rejection(
            R.TOO_LARGE, f"{len(raw)} bytes is more than the limit of {limits.max_payload_bytes}"
        )
    doc = jsondoc.loads(raw, max_depth=MAX_DEPTH, max_items=limits.max_batch_items)
    if isinstance(doc, jsondoc.DocumentError):
        return Rejection(doc.reason, doc.detail)
    if isinstance(doc, list):
        if not doc:
            return Rejection(R.EMPTY_PAYLOAD, "the batch array is empty")
        return doc
    return [doc]


def _number(item: dict[str, Any], name: str, required: bool) -> Decimal | None:
    value = item.get(name)
    if value is None:
        if required:
            raise _Invalid(R.MISSING_FIELD, f"{name} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Invalid(R.WRONG_TYPE, f"{name} must be a number or a decimal string")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid(R.NOT_FINITE, f"{name} is {value}")
        number = Decimal(repr(value))
    elif isinstance(value, int):
        # Decoded integers have at most 64 bits (larger ones are read as floats).
        number = Decimal(value)
    else:
        number = _decimal_string(name, value)
    if number.as_tuple().exponent < -2:  # type: ignore[operator]
        number = number.quantize(_HUNDREDTH, context=_ROUNDING)
    # Negative zero is zero: nothing downstream should show "-0.00".
    return number.copy_abs() if number.is_zero() else number


def _decimal_string(name: str, value: str) -> Decimal:
    if len(value) > _NUMBER_MAX:
        raise _Invalid(
            R.WRONG_TYPE,
            f"{name} is a string of {len(value)} characters, more than {_NUMBER_MAX} "
            "for a decimal number",
        )
    if _DECIMAL.fullmatch(value):
        return Decimal(value.strip())
    if _NON_FINITE.fullmatch(value):
        raise _Invalid(R.NOT_FINITE, f"{name} is {value.strip()}")
    raise _Invalid(
        R.WRONG_TYPE,
        f"{name}={preview(value)} is not a decimal number (ASCII digits, an optional sign and "
        "fraction, no exponent)",
    )


def _in_range(name: str, value: Decimal, bounds: tuple[float, float]) -> None:
    if not bounds[0] <= value <= bounds[1]:
        raise _Invalid(R.OUT_OF_RANGE, f"{name}={value} is outside {bounds[0]}..{bounds[1]}")


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("Asia/Seoul")


def _timestamp(value: Any, tz_name: str) -> datetime:
    """The UTC instant of a ``capture_dt`` (see the module docstring for the format)."""
    if value is None:
        raise _Invalid(R.MISSING_FIELD, "capture_dt is missing")
    if not isinstance(value, str):
        raise _Invalid(R.WRONG_TYPE, "capture_dt must be an ISO-8601 string")
    if len(value) > _CAPTURE_DT_MAX:
        raise _Invalid(
            R.WRONG_TYPE,
            f"capture_dt is a string of {len(value)} characters, more than {_CAPTURE_DT_MAX}",
        )
    if not _CAPTURE_DT.fullmatch(value):
        raise _Invalid(
            R.WRONG_TYPE,
            f"capture_dt={preview(value)} is not an ISO-8601 date and time "
            "(YYYY-MM-DDTHH:MM:SS[.fff][Z|+HH:MM], offset at most 14 hours)",
        )
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise _Invalid(
            R.WRONG_TYPE, f"capture_dt={preview(value)} is not a valid time: {exc}"
        ) from None
    if moment.tzinfo is None:
        # fold=0: see the module docstring for wall times that DST repeats or skips.
        moment = moment.replace(tzinfo=_zone(tz_name))
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        # Only the calendar's first and last days can leave its range by an offset.
        reason = R.STALE_TIMESTAMP if moment.year == MINYEAR else R.FUTURE_TIMESTAMP
        raise _Invalid(
            reason, f"capture_dt={preview(value)} is outside the range of UTC times"
        ) from None


def _fields(item: dict[str, Any]) -> dict[str, Any]:
    """The reading's fields under their current names (the row format's t1/t2/t3 mapped)."""
    if "temperature" in item or not any(k in item for k in _ORIGINAL_KEYS):
        return item
    for old, new in _ORIGINAL_KEYS.items():
        if old in item and new in item:
            raise _Invalid(R.DUPLICATE_KEY, f"{old} and {new} both give {new}")
    return {_ORIGINAL_KEYS.get(k, k): v for k, v in item.items()}


def _named_sensor(item: dict[str, Any], key_sensor_id: str | None) -> str:
    """The sensor id of the payload, which must agree with the one the transport named
    (``key_sensor_id``), or that one when the payload has none.  Not checked for form."""
    payload_sensor = item.get("sensor_id")
    if payload_sensor is None:
        if key_sensor_id is None:
            raise _Invalid(R.MISSING_FIELD, "sensor_id is missing")
        return key_sensor_id
    if not isinstance(payload_sensor, str):
        raise _Invalid(R.WRONG_TYPE, "sensor_id must be a string")
    if key_sensor_id is not None and payload_sensor != key_sensor_id:
        raise _Invalid(
            R.SENSOR_MISMATCH,
            f"payload sensor_id {preview(payload_sensor)} differs from "
            f"{preview(key_sensor_id)} named by the topic/key",
        )
    return payload_sensor


def _measurements(item: dict[str, Any], limits: Limits) -> tuple[Decimal, Decimal, Decimal | None]:
    """Temperature, humidity and perceived temperature (optional), each within its limits.

    All three are read before any range is checked: a field of the wrong type rejects the
    item before a value out of range does.
    """
    temperature = _number(item, "temperature", required=True)
    humidity = _number(item, "humidity", required=True)
    pcv = _number(item, "pcv_temperature", required=False)
    assert temperature is not None and humidity is not None
    _in_range("temperature", temperature, limits.temperature)
    _in_range("humidity", humidity, limits.humidity)
    if pcv is not None:
        _in_range("pcv_temperature", pcv, limits.temperature)
    return temperature, humidity, pcv


def _capture_time(value: Any, tz_name: str, limits: Limits, now: datetime) -> datetime:
    """The UTC instant of a ``capture_dt`` (:func:`_timestamp`), at most
    ``limits.max_future`` ahead of ``now`` and ``limits.max_age`` behind it."""
    capture_dt = _timestamp(value, tz_name)
    if capture_dt > now + limits.max_future:
        raise _Invalid(
            R.FUTURE_TIMESTAMP,
            f"capture_dt {capture_dt.isoformat()} is more than "
            f"{limits.max_future.total_seconds():.0f}s ahead of {now.isoformat()}",
        )
    if capture_dt < now - limits.max_age:
        raise _Invalid(
            R.STALE_TIMESTAMP,
            f"capture_dt {capture_dt.isoformat()} is older than {limits.max_age}",
        )
    return capture_dt


def validate_item(
    item: Any,
    *,
    key_sensor_id: str | None,
    lookup: Lookup,
    limits: Limits,
    now: datetime,
    source: Source,
    received_at: datetime,
    gateway: str | None = None,
) -> Accepted | Rejection:
    """Validate one reading object and enrich it with its location.  Never raises (unless
    ``lookup`` does).

    ``key_sensor_id`` is the sensor named by the transport (MQTT topic or Kafka key); when
    given it must agree with the payload, and it stands in for a payload without a sensor id.
    ``item`` is any value :func:`decode` returned.  ``gateway`` is the account the reading
    came from (the bridge's header); a sensor assigned to a gateway accepts only its own.
    """
    sensor_id = key_sensor_id
    try:
        if not isinstance(item, dict):
            raise _Invalid(R.NOT_AN_OBJECT, f"expected a JSON object, got {_json_type(item)}")
        sensor_id = _named_sensor(item, key_sensor_id)
        if not _valid_sensor_id(sensor_id):
            raise _Invalid(R.WRONG_TYPE, f"sensor_id {preview(sensor_id)} is not a valid id")
        item = _fields(item)
        temperature, humidity, pcv = _measurements(item, limits)
        record = lookup(sensor_id)
        if record is None and not limits.auto_register:
            raise _Invalid(R.UNKNOWN_SENSOR, f"sensor {sensor_id!r} is not registered")
        if record is not None and record.sensor.gateway not in (None, gateway):
            came = f"gateway {preview(gateway)}" if gateway is not None else "no gateway"
            raise _Invalid(
                R.WRONG_GATEWAY,
                f"sensor {sensor_id!r} is assigned to gateway {record.sensor.gateway!r}; "
                f"this reading came from {came}",
            )
        tz_name = record.location.timezone if record else limits.default_timezone
        capture_dt = _capture_time(item.get("capture_dt"), tz_name, limits, now)
    except _Invalid as exc:
        return Rejection(exc.reason, exc.detail, sensor_id=sensor_id)

    computed = False
    if pcv is None:
        pcv = perceived_temperature(temperature, humidity)
        computed = pcv is not None
    reading = Reading(
        sensor_id=sensor_id,
        loc_id=record.sensor.loc_id if record else loc_id_by_convention(sensor_id),
        capture_dt=capture_dt,
        temperature=temperature,
        humidity=humidity,
        pcv_temperature=pcv,
        pcv_computed=computed,
        source=source,
        received_at=received_at,
    )
    return Accepted(reading, auto_registered=record is None)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _valid_sensor_id(sensor_id: str) -> bool:
    # Length first: the cache below holds at most 100,000 ids of at most 64 characters.
    return len(sensor_id) <= _SENSOR_ID_MAX and _sensor_id_matches(sensor_id)


@lru_cache(maxsize=100_000)
def _sensor_id_matches(sensor_id: str) -> bool:
    return _SENSOR_ID.fullmatch(sensor_id) is not None


def validate_payload(
    raw: bytes | None,
    *,
    key_sensor_id: str | None,
    lookup: Lookup,
    limits: Limits,
    now: datetime,
    source: Source,
    received_at: datetime,
    gateway: str | None = None,
) -> list[tuple[Accepted | Rejection, bytes | None]]:
    """Every item of a raw record, validated, each with the bytes a dead letter keeps.
    Never raises.

    A rejected payload (or single item) keeps the original bytes; a rejected item of a batch
    keeps its own JSON (non-finite numbers written as ``NaN``/``Infinity`` as sent) and
    carries its index (the whole payload stays in the raw topic).  A payload rejected as a
    whole (broken JSON, a batch too long, ...) is one rejection, whatever its length.
    """
    items = decode(raw, limits)
    if isinstance(items, Rejection):
        return [(Rejection(items.reason, items.detail, sensor_id=key_sensor_id), raw)]
    batch = len(items) > 1
    results: list[tuple[Accepted | Rejection, bytes | None]] = []
    for index, item in enumerate(items):
        result = validate_item(
            item,
            key_sensor_id=key_sensor_id,
            lookup=lookup,
            limits=limits,
            now=now,
            source=source,
            received_at=received_at,
            gateway=gateway,
        )
        if batch and isinstance(result, Rejection):
            result = Rejection(result.reason, result.detail, index, result.sensor_id)
            results.append((result, jsondoc.dumps(item)))
        else:
            results.append((result, raw))
    return results
