"""The ways one reading object goes bad, each with the reasons its dead letter may give.

A defect changes one field (or adds or drops one) of an otherwise good object, so that the
reason is never in doubt: validation stops at the first fault, and there is only one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tests.fuzz.values import (
    INVALID_IDS,
    NAMES,
    NOT_FINITE,
    OUT_OF_RANGE_H,
    OUT_OF_RANGE_T,
    SENSOR_NOT_TEXT,
    WRONG_NUMBERS,
    WRONG_TIMES,
    Fields,
    R,
    jtext,
    put,
)


class Draws(Protocol):
    """What a defect draws from: the corpus's generator, sensors and clock."""

    rng: random.Random
    sensors: list[str]

    def future_times(self) -> list[str]: ...

    def stale_times(self) -> list[str]: ...


@dataclass(frozen=True)
class Defect:
    """A change that makes one reading object bad: ``when`` is "any", "keyed" (the
    transport names the sensor) or "unkeyed"."""

    name: str
    when: str
    apply: Callable[[Draws, Fields, str], frozenset[str]]


def _set(
    draws: Draws, fields: Fields, keys: Sequence[str], values: Sequence[str], reason: R
) -> frozenset[str]:
    put(fields, draws.rng.choice(keys), draws.rng.choice(values))
    return frozenset({reason})


def _missing(draws: Draws, fields: Fields, _sensor: str) -> frozenset[str]:
    key = draws.rng.choice(("temperature", "humidity", "capture_dt"))
    if draws.rng.random() < 0.5:
        fields[:] = [(k, v) for k, v in fields if k != key]
    else:
        put(fields, key, "null")  # null counts as absent
    return frozenset({R.MISSING_FIELD})


def _no_sensor(draws: Draws, fields: Fields, _sensor: str) -> frozenset[str]:
    if draws.rng.random() < 0.5:
        fields[:] = [(k, v) for k, v in fields if k != "sensor_id"]
    else:
        put(fields, "sensor_id", "null")
    return frozenset({R.MISSING_FIELD})


def _row_duplicate(draws: Draws, fields: Fields, _sensor: str) -> frozenset[str]:
    # The original row format's t2 next to its current name: two values for humidity.
    renamed = {"temperature": "t1", "humidity": "t2", "pcv_temperature": "t3"}
    fields[:] = [(renamed.get(k, k), v) for k, v in fields]
    fields.append(("humidity", '"50.0"'))
    return frozenset({R.DUPLICATE_KEY})


def _mismatch(draws: Draws, fields: Fields, sensor: str) -> frozenset[str]:
    others = [s for s in draws.sensors if s != sensor]
    named = draws.rng.choice(
        [draws.rng.choice(others), sensor.lower(), sensor + "\n", sensor + " ", "TEMPIOT-Z999"]
    )
    put(fields, "sensor_id", jtext(named))
    return frozenset({R.SENSOR_MISMATCH})


def _unknown(draws: Draws, fields: Fields, _sensor: str) -> frozenset[str]:
    named = draws.rng.choice(
        [f"TEMPIOT-Z{draws.rng.randint(100, 999)}", "UNKNOWN-1", draws.sensors[0].lower()]
    )
    put(fields, "sensor_id", jtext(named))
    return frozenset({R.UNKNOWN_SENSOR})


DEFECTS = (
    Defect(
        "wrong_type number",
        "any",
        lambda c, f, _s: _set(c, f, NAMES, WRONG_NUMBERS, R.WRONG_TYPE),
    ),
    Defect("not_finite", "any", lambda c, f, _s: _set(c, f, NAMES, NOT_FINITE, R.NOT_FINITE)),
    Defect(
        "out_of_range temperature",
        "any",
        lambda c, f, _s: _set(
            c, f, ("temperature", "pcv_temperature"), OUT_OF_RANGE_T, R.OUT_OF_RANGE
        ),
    ),
    Defect(
        "out_of_range humidity",
        "any",
        lambda c, f, _s: _set(c, f, ("humidity",), OUT_OF_RANGE_H, R.OUT_OF_RANGE),
    ),
    Defect(
        "wrong_type capture_dt",
        "any",
        lambda c, f, _s: _set(c, f, ("capture_dt",), WRONG_TIMES, R.WRONG_TYPE),
    ),
    Defect(
        "future_timestamp",
        "any",
        lambda c, f, _s: _set(c, f, ("capture_dt",), c.future_times(), R.FUTURE_TIMESTAMP),
    ),
    Defect(
        "stale_timestamp",
        "any",
        lambda c, f, _s: _set(c, f, ("capture_dt",), c.stale_times(), R.STALE_TIMESTAMP),
    ),
    Defect("missing_field", "any", _missing),
    Defect(
        "wrong_type sensor_id",
        "any",
        lambda c, f, _s: _set(c, f, ("sensor_id",), SENSOR_NOT_TEXT, R.WRONG_TYPE),
    ),
    Defect("duplicate_key row format", "any", _row_duplicate),
    Defect("sensor_mismatch", "keyed", _mismatch),
    Defect(
        "wrong_type invalid sensor_id",
        "unkeyed",
        lambda c, f, _s: _set(c, f, ("sensor_id",), [jtext(i) for i in INVALID_IDS], R.WRONG_TYPE),
    ),
    Defect("unknown_sensor", "unkeyed", _unknown),
    Defect("missing_field sensor_id", "unkeyed", _no_sensor),
)
