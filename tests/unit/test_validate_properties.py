"""Properties of ingest validation: for any bytes, a reading or a reasoned rejection.

The ingest stage validates every raw record with these functions; one that raised would stop
the stage and, on restart, stop it again on the same record.  So the central property is
totality: whatever arrives, the result is an :class:`Accepted` or a :class:`Rejection` with a
:class:`DeadLetterReason`, a detail for people and bytes for the dead letter.
"""

from __future__ import annotations

import contextlib
import json
import math
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.deadletters import DeadLetterReason as R
from schemas.master import Location, Sensor, SensorRecord
from stream_apps.ingest import jsondoc
from stream_apps.ingest.validate import MAX_DEPTH, Accepted, Limits, Rejection, validate_payload

pytestmark = pytest.mark.unit

NOW = datetime(2025, 9, 12, 6, 0, tzinfo=UTC)
SEOUL = timedelta(hours=9)


def _record(sensor_id: str, zone: str) -> SensorRecord:
    loc_id = sensor_id[-4:]
    return SensorRecord(
        sensor=Sensor(sensor_id=sensor_id, loc_id=loc_id),
        location=Location(loc_id=loc_id, factory="SinPyeong", timezone=zone),
        updated_at=NOW,
    )


KNOWN = {
    "TEMPIOT-A011": _record("TEMPIOT-A011", "Asia/Seoul"),
    "TEMPIOT-A012": _record("TEMPIOT-A012", "Asia/Seoul"),
    "TEMPIOT-B001": _record("TEMPIOT-B001", "Europe/Berlin"),
    "TEMPIOT-N001": _record("TEMPIOT-N001", "America/New_York"),
}
FIELDS = ("sensor_id", "capture_dt", "temperature", "humidity", "pcv_temperature", "t1", "t2", "t3")


def examples(n: int) -> settings:
    """Settings of a property here: ``n`` examples, no deadline (shared CI machines are slow)
    and no example database (a failure prints its input)."""
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def validate(
    raw: bytes, key: str | None = None, limits: Limits | None = None
) -> list[tuple[Accepted | Rejection, bytes | None]]:
    return validate_payload(
        raw,
        key_sensor_id=key,
        lookup=KNOWN.get,
        limits=limits or Limits(),
        now=NOW,
        source="kafka",
        received_at=NOW,
    )


def assert_total(raw: bytes, key: str | None = None) -> list[Any]:
    """Validate ``raw`` and check what every result must be, whatever the input."""
    results = validate(raw, key)
    assert results
    for result, kept in results:
        assert isinstance(result, Accepted | Rejection)
        if isinstance(result, Rejection):
            assert isinstance(result.reason, R)
            assert result.detail.strip()
            assert isinstance(kept, bytes)
            if result.index is not None:
                # A batch item's own JSON, NaN/Infinity written as sent (as json reads them).
                json.loads(kept)
        else:
            assert result.reading.capture_dt.tzinfo is not None
    return results


# --- values ------------------------------------------------------------------------------

ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "\ud800",
    "\udfff",
    "\ufeff",
    "NaN",
    "-Infinity",
    "inf",
    "1e2",
    "1E+400",
    "-0",
    "+0.00",
    " 22.1 ",
    "22.",
    ".5",
    "٢٥.٥",
    "２５",
    "੨੫",
    "𝟐𝟓",
    "9" * 27 + ".999",
    "9" * 64,
    "9" * 65,
    "TEMPIOT-A011",
    "TEMPIOT-A011\n",
    "TEMPIOT-A012",
    "TEMPIOT-B001",
]
TIMES = [
    "2025-09-12T05:59:38.837Z",
    "2025-09-12 14:59:38",
    "2025-09-12T05:59:38.123456789Z",
    "2025-09-12T05:59:38,5+09:00",
    "2025-09-12T14:59+0900",
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59.999999",
    "2025-06-30T23:59:60Z",
    "2025-02-29T00:00:00Z",
    "2024-02-29T00:00:00Z",
    "2025-09-12T24:00:00",
    "2025-10-26 02:30:00",
    "2025-03-30 02:30:00",
    "2025-11-02 01:30:00",
    "2025-03-09 02:30:00",
    "2025-09-12T05:59:38+14:00",
    "2025-09-12T05:59:38-14:01",
    "2025-09-12T05:59:38+99:99",
    "٢٠٢٥-09-12T05:59:38Z",
    "2025-09-12",
]

text = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(categories=["Nd", "Cs", "Zs", "Cc", "No"]), max_size=10),
    st.sampled_from(ODD_STRINGS),
    st.sampled_from(TIMES),
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**308, 10**309]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e-300, max_value=1e-300),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, text)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), text), children, max_size=4),
    ),
    max_leaves=25,
)
field_values = st.one_of(scalars, json_values, st.sampled_from(TIMES), st.sampled_from(list(KNOWN)))
readings = st.fixed_dictionaries({}, optional={name: field_values for name in FIELDS}).flatmap(
    lambda doc: st.dictionaries(text, json_values, max_size=2).map(lambda extra: extra | doc)
)
documents = st.one_of(
    json_values, readings, st.lists(readings, max_size=6), st.lists(json_values, max_size=4)
)


def encodings(value: Any) -> list[bytes]:
    """The ways a gateway might write ``value``: escaped ASCII, raw UTF-8 (lone surrogates
    become invalid UTF-8), and compact orjson where it can."""
    ascii_text = json.dumps(value).encode()
    utf8 = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    out = [ascii_text, utf8]
    with contextlib.suppress(TypeError):  # orjson refuses ints beyond 64 bits, surrogates
        out.append(orjson.dumps(value))
    return out


# --- properties --------------------------------------------------------------------------


@examples(300)
@given(st.binary(max_size=400), st.one_of(st.none(), st.sampled_from([*KNOWN, "X\n"])))
def test_any_bytes_give_results_never_an_exception(raw: bytes, key: str | None) -> None:
    assert_total(raw, key)


@examples(300)
@given(st.lists(st.sampled_from(list(b'[]{}",:0123456789.eE+-tfnulrasNIy \\\n\x00')), max_size=200))
def test_json_like_noise_gives_results(chars: list[int]) -> None:
    assert_total(bytes(chars))


@examples(120)
@given(documents)
def test_any_json_value_gives_results(value: Any) -> None:
    for raw in encodings(value):
        assert_total(raw)


# Objects written as text, so that keys can repeat: each node is a leaf's JSON text or a list
# of (key text, node).  Keys with colons and escaped colons ('":"' and '"\\u003a"' are the
# same key) test the fast duplicate check, NaN the standard library's path.
KEY_TEXTS = ['"a"', '"b"', '"a:"', '":"', '"\\u003a"', '"\\u003A"', '"temperature"']
LEAF_TEXTS = ["1", '"x:y"', '":"', '"\\u003a"', "NaN", "[]", '"2025-09-12T05:59:38Z"']
Tree = str | list[tuple[str, "Tree"]]
trees = st.recursive(
    st.sampled_from(LEAF_TEXTS),
    lambda inner: st.lists(st.tuples(st.sampled_from(KEY_TEXTS), inner), max_size=4),
    max_leaves=12,
)


def render(node: Tree, spaced: bool) -> str:
    if isinstance(node, str):
        return node
    colon = " : " if spaced else ":"
    return "{" + ",".join(f"{key}{colon}{render(value, spaced)}" for key, value in node) + "}"


def repeats(node: Tree) -> bool:
    if isinstance(node, str):
        return False
    keys = [json.loads(key) for key, _ in node]
    return len(set(keys)) < len(keys) or any(repeats(value) for _, value in node)


@examples(200)
@given(
    st.lists(st.tuples(st.sampled_from(KEY_TEXTS), trees), max_size=5), st.booleans(), st.booleans()
)
def test_a_repeated_key_is_always_found(tree: Tree, spaced: bool, in_batch: bool) -> None:
    body = render(tree, spaced)
    raw = (f"[{body}, {{}}]" if in_batch else body).encode()
    results = assert_total(raw)
    reasons = [r.reason for r, _ in results if isinstance(r, Rejection)]
    assert (reasons == [R.DUPLICATE_KEY]) == repeats(tree), raw


@examples(25)
@given(
    st.integers(min_value=MAX_DEPTH + 1, max_value=100_000),
    st.lists(st.sampled_from(["[", '{"k":', '{"sensor_id": "TEMPIOT-A011", "x":']), min_size=1),
    st.booleans(),
)
def test_deep_nesting_is_too_deep_not_a_recursion_error(
    depth: int, openers: list[str], closed: bool
) -> None:
    chain = [openers[i % len(openers)] for i in range(depth)]
    closers = "".join("]" if o == "[" else "}" for o in reversed(chain))
    raw = ("".join(chain) + "1" + (closers if closed else "")).encode()
    [(result, kept)] = validate(raw, limits=Limits(max_payload_bytes=len(raw)))
    assert isinstance(result, Rejection)
    assert result.reason == R.TOO_DEEP
    assert kept == raw


def test_depth_of_a_hundred_thousand() -> None:
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"0" + b"}" * 100_000):
        [(result, _)] = validate(raw)
        assert isinstance(result, Rejection) and result.reason == R.TOO_DEEP


@examples(32)
@given(st.integers(min_value=1, max_value=MAX_DEPTH))
def test_nesting_up_to_the_limit_is_json(depth: int) -> None:
    raw = b"[" * depth + b"]" * depth
    assert jsondoc.loads(raw, max_depth=MAX_DEPTH, max_items=10) == json.loads(raw)


@examples(60)
@given(
    st.lists(
        st.dictionaries(st.sampled_from(FIELDS), scalars, max_size=3), min_size=2, max_size=12
    ),
    st.integers(min_value=1, max_value=10),
)
def test_a_batch_over_the_limit_is_one_rejection(batch: list[Any], limit: int) -> None:
    raw = json.dumps(batch).encode()
    results = validate_payload(
        raw,
        key_sensor_id=None,
        lookup=KNOWN.get,
        limits=Limits(max_batch_items=limit),
        now=NOW,
        source="mqtt",
        received_at=NOW,
    )
    if len(batch) > limit:
        [(result, kept)] = results
        assert isinstance(result, Rejection) and kept == raw
        assert result.reason == R.BATCH_TOO_LONG
    else:
        assert all(getattr(r, "reason", None) != R.BATCH_TOO_LONG for r, _ in results)


# --- well-formed readings ----------------------------------------------------------------


def _two_places(value: Decimal) -> Decimal:
    if value.as_tuple().exponent < -2:  # type: ignore[operator]
        value = value.quantize(Decimal("0.01"), ROUND_HALF_UP)
    return value


def _written(value: Decimal, as_string: bool) -> Any:
    return str(value) if as_string else float(value)


@st.composite
def good_readings(draw: st.DrawFn) -> tuple[dict[str, Any], datetime, dict[str, Decimal]]:
    sensor = draw(st.sampled_from(["TEMPIOT-A011", "TEMPIOT-A012"]))
    micros = draw(st.integers(min_value=0, max_value=999_999))
    instant = NOW - timedelta(
        seconds=draw(st.integers(min_value=-240, max_value=6 * 24 * 3600)), microseconds=micros
    )
    form = draw(st.sampled_from(["Z", "+09:00", "-05:30", "naive", "nanos"]))
    if form == "naive":
        capture_dt = f"{(instant + SEOUL).replace(tzinfo=None).isoformat(sep=' ')}"
    elif form == "nanos":
        digits = draw(st.integers(min_value=0, max_value=999))
        capture_dt = (
            f"{instant.replace(tzinfo=None).isoformat(timespec='microseconds')}{digits:03d}Z"
        )
    else:
        offset = {"Z": timedelta(0), "+09:00": SEOUL, "-05:30": -timedelta(hours=5, minutes=30)}
        capture_dt = f"{(instant + offset[form]).replace(tzinfo=None).isoformat()}{form}"
    values = {
        "temperature": draw(st.decimals(min_value=-40, max_value=125, places=3)),
        "humidity": draw(st.decimals(min_value=0, max_value=100, places=3)),
    }
    if draw(st.booleans()):
        values["pcv_temperature"] = draw(st.decimals(min_value=-40, max_value=125, places=2))
    doc: dict[str, Any] = {"sensor_id": sensor, "capture_dt": capture_dt}
    for name, value in values.items():
        doc[name] = _written(value, draw(st.booleans()))
    return doc, instant, values


@examples(150)
@given(st.lists(good_readings(), min_size=1, max_size=5))
def test_well_formed_readings_are_accepted_and_round_trip(
    cases: list[tuple[dict[str, Any], datetime, dict[str, Decimal]]],
) -> None:
    docs = [doc for doc, _, _ in cases]
    raw = orjson.dumps(docs if len(docs) > 1 else docs[0])
    results = validate(raw)
    assert len(results) == len(cases)
    for (result, _), (doc, instant, values) in zip(results, cases, strict=True):
        assert isinstance(result, Accepted), (doc, result)
        reading = result.reading
        assert reading.sensor_id == doc["sensor_id"]
        assert reading.capture_dt == instant
        assert reading.temperature == _two_places(values["temperature"])
        assert reading.humidity == _two_places(values["humidity"])
        if "pcv_temperature" in values:
            assert reading.pcv_temperature == values["pcv_temperature"]
            assert not reading.pcv_computed
        for number in (reading.temperature, reading.humidity):
            assert number.is_finite() and not (number.is_zero() and number.is_signed())


@examples(100)
@given(documents)
def test_dumps_writes_what_loads_read(value: Any) -> None:
    raw = json.dumps(value).encode()
    decoded = jsondoc.loads(raw, max_depth=MAX_DEPTH, max_items=1000)
    if isinstance(decoded, jsondoc.DocumentError):
        return
    again = json.loads(jsondoc.dumps(decoded))
    assert _same(again, decoded)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
