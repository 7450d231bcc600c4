"""Validation of incoming readings: bytes in, readings or reasoned rejections out.

Plain functions, no I/O: the ingest stage calls them for every raw record, whichever way
(MQTT bridge or a gateway's own Kafka producer) the record came in.  Every rejection carries a
:class:`DeadLetterReason` and a human-readable detail.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from schemas.deadletters import DeadLetterReason
from schemas.master import SENSOR_ID_PATTERN, SensorRecord, loc_id_by_convention
from schemas.readings import Reading, Source
from stream_apps.ingest.perceived import perceived_temperature

R = DeadLetterReason
_HUNDREDTH = Decimal("0.01")
_SENSOR_ID_MAX = 64
_SENSOR_ID = re.compile(SENSOR_ID_PATTERN)

# The original system's row format: t1/t2/t3 for temperature/humidity/pcv_temperature.
_ORIGINAL_KEYS = {"t1": "temperature", "t2": "humidity", "t3": "pcv_temperature"}


@dataclass(frozen=True)
class Limits:
    temperature: tuple[float, float] = (-40.0, 125.0)
    humidity: tuple[float, float] = (0.0, 100.0)
    max_future: timedelta = timedelta(minutes=5)
    max_age: timedelta = timedelta(days=7)
    max_payload_bytes: int = 1024 * 1024
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
    """The items of a payload: one object, or each element of a JSON array (a batch)."""
    if not raw:
        return Rejection(R.EMPTY_PAYLOAD, "the payload is empty")
    if len(raw) > limits.max_payload_bytes:
        return Rejection(
            R.TOO_LARGE, f"{len(raw)} bytes is more than the limit of {limits.max_payload_bytes}"
        )
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return Rejection(R.INVALID_UTF8, f"not UTF-8: {uexc.reason} at byte {uexc.start}")
        try:
            # The standard library accepts the non-standard NaN/Infinity literals, so that
            # such a value is reported as not finite instead of as broken JSON.
            doc = json.loads(text)
        except ValueError:
            return Rejection(R.MALFORMED_JSON, f"not valid JSON: {exc}")
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
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid(R.NOT_FINITE, f"{name} is {value}")
    try:
        number = Decimal(value.strip()) if isinstance(value, str) else Decimal(repr(value))
    except InvalidOperation:
        raise _Invalid(R.WRONG_TYPE, f"{name}={value!r} is not a decimal number") from None
    if not number.is_finite():
        raise _Invalid(R.NOT_FINITE, f"{name} is {value}")
    if number.as_tuple().exponent < -2:  # type: ignore[operator]
        number = number.quantize(_HUNDREDTH, ROUND_HALF_UP)
    return number


def _in_range(name: str, value: Decimal, bounds: tuple[float, float]) -> None:
    if not bounds[0] <= value <= bounds[1]:
        raise _Invalid(R.OUT_OF_RANGE, f"{name}={value} is outside {bounds[0]}..{bounds[1]}")


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _timestamp(value: Any, tz_name: str) -> datetime:
    if value is None:
        raise _Invalid(R.MISSING_FIELD, "capture_dt is missing")
    if not isinstance(value, str):
        raise _Invalid(R.WRONG_TYPE, "capture_dt must be an ISO-8601 string")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _Invalid(R.WRONG_TYPE, f"capture_dt={value!r} is not an ISO-8601 time") from None
    if moment.tzinfo is None:
        try:
            moment = moment.replace(tzinfo=_zone(tz_name))
        except ZoneInfoNotFoundError:
            moment = moment.replace(tzinfo=_zone("Asia/Seoul"))
    return moment.astimezone(UTC)


def validate_item(
    item: Any,
    *,
    key_sensor_id: str | None,
    lookup: Lookup,
    limits: Limits,
    now: datetime,
    source: Source,
    received_at: datetime,
) -> Accepted | Rejection:
    """Validate one reading object and enrich it with its location.

    ``key_sensor_id`` is the sensor named by the transport (MQTT topic or Kafka key); when
    given it must agree with the payload, and it stands in for a payload without a sensor id.
    """
    sensor_id = key_sensor_id
    try:
        if not isinstance(item, dict):
            raise _Invalid(R.NOT_AN_OBJECT, f"expected a JSON object, got {type(item).__name__}")
        payload_sensor = item.get("sensor_id")
        if payload_sensor is not None:
            if not isinstance(payload_sensor, str):
                raise _Invalid(R.WRONG_TYPE, "sensor_id must be a string")
            if key_sensor_id is not None and payload_sensor != key_sensor_id:
                raise _Invalid(
                    R.SENSOR_MISMATCH,
                    f"payload sensor_id {payload_sensor!r} differs from {key_sensor_id!r} "
                    "named by the topic/key",
                )
            sensor_id = payload_sensor
        if sensor_id is None:
            raise _Invalid(R.MISSING_FIELD, "sensor_id is missing")
        if not _valid_sensor_id(sensor_id):
            raise _Invalid(R.WRONG_TYPE, f"sensor_id {sensor_id[:80]!r} is not a valid id")

        if "temperature" not in item and any(k in item for k in _ORIGINAL_KEYS):
            item = {_ORIGINAL_KEYS.get(k, k): v for k, v in item.items()}
        temperature = _number(item, "temperature", required=True)
        humidity = _number(item, "humidity", required=True)
        pcv = _number(item, "pcv_temperature", required=False)
        assert temperature is not None and humidity is not None
        _in_range("temperature", temperature, limits.temperature)
        _in_range("humidity", humidity, limits.humidity)
        if pcv is not None:
            _in_range("pcv_temperature", pcv, limits.temperature)

        record = lookup(sensor_id)
        if record is None and not limits.auto_register:
            raise _Invalid(R.UNKNOWN_SENSOR, f"sensor {sensor_id!r} is not registered")
        tz_name = record.location.timezone if record else limits.default_timezone
        capture_dt = _timestamp(item.get("capture_dt"), tz_name)
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


@lru_cache(maxsize=100_000)
def _valid_sensor_id(sensor_id: str) -> bool:
    return len(sensor_id) <= _SENSOR_ID_MAX and _SENSOR_ID.match(sensor_id) is not None


def validate_payload(
    raw: bytes | None,
    *,
    key_sensor_id: str | None,
    lookup: Lookup,
    limits: Limits,
    now: datetime,
    source: Source,
    received_at: datetime,
) -> list[tuple[Accepted | Rejection, bytes | None]]:
    """Every item of a raw record, validated, each with the bytes a dead letter keeps.

    A rejected payload (or single item) keeps the original bytes; a rejected item of a batch
    keeps its own JSON and carries its index (the whole payload stays in the raw topic).
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
        )
        if batch and isinstance(result, Rejection):
            result = Rejection(result.reason, result.detail, index, result.sensor_id)
            results.append((result, orjson.dumps(item)))
        else:
            results.append((result, raw))
    return results
