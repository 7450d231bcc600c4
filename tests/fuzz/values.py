"""Text of reading payloads: every accepted spelling of a good value, and the bad values of
each kind, with the outcome docs/wire-format.md gives them.

Nothing here asks the ingest code what it would do: the expected value of a good field is
computed from its text, and a payload that is no JSON document is judged by the standard
library's parser.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

from pydantic import BaseModel

from schemas.deadletters import DeadLetterReason
from stream_apps.ingest.validate import MAX_DEPTH
from tests.ground_truth import KST

R = DeadLetterReason
CENT = Decimal("0.01")

Fields = list[tuple[str, str]]  # key, JSON text of the value


# -- payload text ---------------------------------------------------------------------------


def jtext(value: str) -> str:
    """A JSON string literal (ASCII, escaped as needed)."""
    return json.dumps(value)


def render(fields: Fields) -> bytes:
    return ("{" + ",".join(f"{jtext(k)}:{v}" for k, v in fields) + "}").encode()


def put(fields: Fields, key: str, text: str) -> None:
    for n, (k, _) in enumerate(fields):
        if k == key:
            fields[n] = (key, text)
            return
    fields.append((key, text))


def stored_value(text: str) -> Decimal:
    """What a valid number field holds once read (docs/wire-format.md): more than two
    decimals rounded half up, negative zero as zero."""
    number = Decimal(text.strip().strip('"').strip())
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2:
        number = number.quantize(CENT, rounding=ROUND_HALF_UP)
    return number.copy_abs() if number.is_zero() else number


def broken_reasons(raw: bytes) -> frozenset[str] | None:
    """The reasons a payload that is no JSON document must get; None when it is JSON
    after all.  The standard library decides, not the ingest code."""
    if not raw:
        return frozenset({R.EMPTY_PAYLOAD})
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return frozenset({R.INVALID_UTF8})
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        # Broken and bracketed deeper than the limit: refused on either ground, both right.
        if text.count("[") + text.count("{") > MAX_DEPTH:
            return frozenset({R.MALFORMED_JSON, R.TOO_DEEP})
        return frozenset({R.MALFORMED_JSON})
    return None


def not_a(model: type[BaseModel], raw: bytes) -> bool:
    """Whether ``raw`` fails to decode as the topic's model (garbage for its consumers)."""
    try:
        model.model_validate_json(raw)
    except ValueError:
        return True
    return False


# -- capture times and numbers in every accepted form ---------------------------------------

TimeForm = Callable[[datetime, random.Random], tuple[str, datetime]]


def _ms(at: datetime) -> str:
    return f"{at.microsecond // 1000:03d}"


def _utc(at: datetime, _rng: random.Random) -> tuple[str, datetime]:
    return f"{at:%Y-%m-%dT%H:%M:%S}.{_ms(at)}Z", at


def _seoul(at: datetime, _rng: random.Random) -> tuple[str, datetime]:
    return f"{at.astimezone(KST):%Y-%m-%dT%H:%M:%S}.{_ms(at)}+09:00", at


def _naive_local(at: datetime, _rng: random.Random) -> tuple[str, datetime]:
    # Without an offset: the wall time of the sensor's factory (Asia/Seoul, no DST).
    return f"{at.astimezone(KST):%Y-%m-%d %H:%M:%S}.{_ms(at)}", at


def _comma_compact(at: datetime, _rng: random.Random) -> tuple[str, datetime]:
    return f"{at.astimezone(KST):%Y-%m-%dT%H:%M:%S},{_ms(at)}+0900", at


def _nine_digits(at: datetime, rng: random.Random) -> tuple[str, datetime]:
    # Digits beyond the microsecond are dropped, not rounded.
    extra = rng.randrange(1_000_000)
    text = f"{at:%Y-%m-%dT%H:%M:%S}.{_ms(at)}{extra:06d}Z"
    return text, at + timedelta(microseconds=extra // 1000)


def _negative_offset(at: datetime, _rng: random.Random) -> tuple[str, datetime]:
    other = at.astimezone(timezone(-timedelta(hours=5, minutes=30)))
    return f"{other:%Y-%m-%dT%H:%M:%S}.{_ms(at)}-05:30", at


def _hours_offset(at: datetime, _rng: random.Random) -> tuple[str, datetime]:
    return f"{at.astimezone(KST):%Y-%m-%dT%H:%M:%S}+09", at.replace(microsecond=0)


def _minutes_only(at: datetime, _rng: random.Random) -> tuple[str, datetime]:
    return f"{at.astimezone(KST):%Y-%m-%d %H:%M}", at.replace(second=0, microsecond=0)


def _padded(at: datetime, _rng: random.Random) -> tuple[str, datetime]:
    return f"  {at:%Y-%m-%dT%H:%M:%S}.{_ms(at)}Z ", at


def _whole_seconds(at: datetime, _rng: random.Random) -> tuple[str, datetime]:
    return f"{at:%Y-%m-%dT%H:%M:%S}Z", at.replace(microsecond=0)


TIME_FORMS: tuple[TimeForm, ...] = (
    _utc,
    _utc,
    _seoul,
    _naive_local,
    _comma_compact,
    _nine_digits,
    _negative_offset,
    _hours_offset,
    _minutes_only,
    _padded,
    _whole_seconds,
)

NUMBER_FORMS: tuple[Callable[[Decimal], str], ...] = (
    str,
    str,
    lambda v: f'"{v}"',
    lambda v: f'"  {v} "',
    lambda v: f"{v.scaleb(-1)}e1",
    lambda v: f'"+{v}"' if v >= 0 else f'"{v}"',
)
# Good values at and just inside the limits, and odd spellings of good values.
T_EDGES = (
    "125",
    "-40",
    "125.004",
    "-40.004",
    "-39.995",
    '"125.00"',
    "-0",
    "-0.0",
    '"-0"',
    '" 25.5 "',
    '"+25.5"',
    "2.55e1",
    "25.555",
    "0.125",
)
H_EDGES = ("0", "100", "-0.004", "100.004", "99.995", '"-0.00"', "1E2", "-0", '"100"', "0.005")
ROW_NAMES = ("t1", "t2", "t3")
NAMES = ("temperature", "humidity", "pcv_temperature")
# Extra fields are ignored, whatever they hold (an escaped NUL, a surrogate pair, ...).
EXTRAS: tuple[tuple[str, str], ...] = (
    ("seq", "12345"),
    ("note", '"\\u0000 in an ignored field"'),
    ("emoji", '"\\ud83d\\ude00"'),
    ("label", json.dumps("온도 25°C ✓", ensure_ascii=False)),
    ("meta", '{"fw":"1.2.3","tags":["a","b"],"ok":true,"n":null}'),
    ("big", "1" + "0" * 30),
    ("nested_empty", "[[],{}]"),
)

# -- bad values -----------------------------------------------------------------------------

WRONG_NUMBERS = (
    "true",
    "false",
    "[]",
    "{}",
    "[25.5]",
    '{"value":25.5}',
    '"warm"',
    '"1e2"',
    '"2.5E1"',
    '"\\u0662\\u0665"',  # Arabic-Indic digits
    json.dumps("\u0662\u0665.\u0665", ensure_ascii=False),
    '"\\uff12\\uff15"',  # fullwidth digits
    '"25,5"',
    '""',
    '" "',
    '"25."',
    '".5"',
    '"1_000"',
    '"0x1A"',
    '"Infinity5"',
    '"25.5.1"',
    '"--1"',
    '"' + "1" * 65 + '"',  # a decimal string longer than 64 characters
)
NOT_FINITE = (
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "1" + "0" * 400,
    "-1" + "0" * 400,
    '"NaN"',
    '"nan"',
    '" inf "',
    '"-Infinity"',
    '"sNaN"',
    '"+infinity"',
)
OUT_OF_RANGE_T = (
    "125.01",
    "-40.01",
    "125.005",
    "-40.005",
    "999999999999999999999999999.999",
    '"999999999999999999999999999.999"',
    "1e308",
    "-1e308",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775809",
    '"-' + "1" * 60 + '"',
    "126",
    '"  200  "',
)
OUT_OF_RANGE_H = ("100.01", "-0.01", "100.005", "-0.005", "101", "-1", "1e3", '"1000"', "-1e-2")
WRONG_TIMES = (
    '"2025-02-30T00:00:00Z"',
    '"2025-13-01T00:00:00Z"',
    '"2025-00-10T00:00:00Z"',
    '"2025-01-01T24:00:00Z"',
    '"2025-01-01T23:59:60Z"',
    '"2025-01-01"',
    '"20250101T000000Z"',
    '"2025-01-01t00:00:00Z"',
    '"2025-01-01T00:00:00z"',
    '"2025-01-01T00:00:00+15:00"',
    '"2025-01-01T00:00:00+14:30"',
    '"2025-01-01T00:00:00.1234567890Z"',
    '"\\uff12\\uff10\\uff12\\uff15-01-01T00:00:00Z"',
    '"0000-01-01T00:00:00Z"',
    '"2025-1-1T00:00:00Z"',
    '""',
    '" "',
    '"yesterday"',
    jtext("2025-01-01T00:00:00Z" + " " * 50),  # longer than 64 characters
    '"2025-01-01T00:00:00 Z"',
    "1736000000",
    "1.7e9",
    "true",
    "[]",
    "{}",
    '["2025-01-01T00:00:00Z"]',
)
FAR_FUTURE = (
    '"9999-12-31T23:59:59Z"',
    '"9999-12-31T23:59:59-14:00"',  # beyond the calendar once in UTC
    '"9999-12-31 23:59:59"',
)
ANCIENT = (
    '"0001-01-01T00:00:00+14:00"',  # before the calendar once in UTC
    '"0001-01-01 08:59:59"',
    '"0001-01-01T00:00:00Z"',
    '"1970-01-01T00:00:00Z"',
    '"2000-02-29T12:00:00Z"',
    '"1999-12-31 23:59:59"',
)
SENSOR_NOT_TEXT = ("42", "true", "[]", "{}", "4.2", '["TEMPIOT-A011"]')
INVALID_IDS = (
    "",
    " TEMPIOT-A011",
    "TEMPIOT-A011\n",
    "TEMPIOT A011",
    "TEMPIOT-\u00c4011",
    "-TEMPIOT",
    "T" * 65,
    "TEMPIOT/A011",
    "TEMPIOT-A011\u0000",
    "_A011",
)
# Sensor ids that the MQTT pattern takes from the topic, but that no sensor id may be.
INVALID_TOPIC_IDS = ("TEMPIOT A011", "TEMPIOT-\u00c4011", "-TEMPIOT", "T" * 65, "TEMPIOT-A011 ")
NON_OBJECTS = ("42", '"TEMPIOT-A011"', "true", "null", "[]", "[1,2]", "1.5e3", "NaN", '""')
TOP_LEVEL_NON_OBJECTS = (
    "42",
    '"x"',
    "true",
    "false",
    "null",
    "NaN",
    "-Infinity",
    "1e999",
    "0",
    '"{\\"sensor_id\\":\\"TEMPIOT-A011\\"}"',
)
INVALID_UTF8 = (
    b"\xc0\xaf",  # overlong
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xe2\x82",  # a truncated sequence
    b"\xff",
    b"\xf8\x88\x80\x80\x80",  # five bytes
    b"\xb0",  # a Latin-1 degree sign
)
