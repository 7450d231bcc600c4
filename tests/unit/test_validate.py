from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest

from schemas.deadletters import DeadLetterReason as R
from schemas.master import Location, Sensor, SensorRecord
from stream_apps.ingest.validate import Accepted, Limits, Rejection, validate_payload

pytestmark = pytest.mark.unit

NOW = datetime(2025, 9, 12, 6, 0, tzinfo=UTC)
KNOWN = {
    "TEMPIOT-A011": SensorRecord(
        sensor=Sensor(sensor_id="TEMPIOT-A011", loc_id="A011"),
        location=Location(loc_id="A011", factory="SinPyeong", building="MX-1", floor=1),
        updated_at=NOW,
    )
}


def run(raw: bytes | None, key: str | None = None, limits: Limits | None = None):
    return [
        r
        for r, _ in validate_payload(
            raw,
            key_sensor_id=key,
            lookup=KNOWN.get,
            limits=limits or Limits(),
            now=NOW,
            source="mqtt",
            received_at=NOW,
        )
    ]


def one(raw: bytes | None, key: str | None = None, limits: Limits | None = None):
    results = run(raw, key, limits)
    assert len(results) == 1
    return results[0]


def good(**over: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "sensor_id": "TEMPIOT-A011",
        "capture_dt": "2025-09-12T05:59:38.837Z",
        "temperature": 22.1,
        "humidity": 77.7,
        "pcv_temperature": 23.8,
    }
    doc.update(over)
    return doc


def test_the_documented_payload_is_accepted_exactly() -> None:
    result = one(orjson.dumps(good()))
    assert isinstance(result, Accepted)
    r = result.reading
    assert (r.sensor_id, r.loc_id) == ("TEMPIOT-A011", "A011")
    assert r.capture_dt == datetime(2025, 9, 12, 5, 59, 38, 837000, tzinfo=UTC)
    assert (r.temperature, r.humidity, r.pcv_temperature) == (
        Decimal("22.1"),
        Decimal("77.7"),
        Decimal("23.8"),
    )
    assert not r.pcv_computed


def test_decimal_strings_and_computed_perceived_temperature() -> None:
    doc = good(temperature="22.1", humidity="77.7")
    del doc["pcv_temperature"]
    result = one(orjson.dumps(doc))
    assert isinstance(result, Accepted)
    assert result.reading.pcv_temperature == Decimal("23.8")
    assert result.reading.pcv_computed


def test_original_row_format_in_factory_local_time() -> None:
    raw = orjson.dumps(
        {
            "sensor_id": "TEMPIOT-A011",
            "capture_dt": "2025-09-12 14:59:38",
            "t1": "22.1",
            "t2": "77.7",
            "t3": "23.8",
        }
    )
    result = one(raw)
    assert isinstance(result, Accepted)
    assert result.reading.capture_dt == datetime(2025, 9, 12, 5, 59, 38, tzinfo=UTC)
    assert result.reading.pcv_temperature == Decimal("23.8")


def test_a_batch_array_becomes_its_readings_and_rejections_keep_their_index() -> None:
    batch = [good(capture_dt=f"2025-09-12T05:5{i}:00Z") for i in range(3)]
    batch.insert(1, good(temperature="hot"))
    results = run(orjson.dumps(batch))
    assert [type(r).__name__ for r in results] == ["Accepted", "Rejection", "Accepted", "Accepted"]
    rejected = results[1]
    assert isinstance(rejected, Rejection)
    assert (rejected.reason, rejected.index) == (R.WRONG_TYPE, 1)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", R.EMPTY_PAYLOAD),
        (b"[]", R.EMPTY_PAYLOAD),
        (b'{"sensor_id": "TEMPIOT-A011", "temp', R.MALFORMED_JSON),
        (b"\xff\xfe{}", R.INVALID_UTF8),
        (b"42", R.NOT_AN_OBJECT),
        (
            orjson.dumps(
                {"sensor_id": "TEMPIOT-A011", "capture_dt": "2025-09-12T05:59:38Z", "humidity": 50}
            ),
            R.MISSING_FIELD,
        ),
        (orjson.dumps(good(capture_dt=None)), R.MISSING_FIELD),
        (orjson.dumps(good(temperature=True)), R.WRONG_TYPE),
        (orjson.dumps(good(humidity=[1])), R.WRONG_TYPE),
        (orjson.dumps(good(capture_dt="yesterday")), R.WRONG_TYPE),
        (orjson.dumps(good(sensor_id=17)), R.WRONG_TYPE),
        (
            b'{"sensor_id": "TEMPIOT-A011", "capture_dt": "2025-09-12T05:59:38Z",'
            b' "temperature": NaN, "humidity": 50}',
            R.NOT_FINITE,
        ),
        (orjson.dumps(good(humidity="Infinity")), R.NOT_FINITE),
        (orjson.dumps(good(temperature=130)), R.OUT_OF_RANGE),
        (orjson.dumps(good(humidity=-1)), R.OUT_OF_RANGE),
        (orjson.dumps(good(capture_dt="2025-09-12T06:10:00Z")), R.FUTURE_TIMESTAMP),
        (orjson.dumps(good(capture_dt="2025-09-01T06:00:00Z")), R.STALE_TIMESTAMP),
        (orjson.dumps(good(sensor_id="TEMPIOT-Z999")), R.UNKNOWN_SENSOR),
    ],
)
def test_each_kind_of_bad_input_has_its_reason(raw: bytes, reason: R) -> None:
    result = one(raw)
    assert isinstance(result, Rejection), result
    assert result.reason == reason
    assert result.detail


def test_too_large_payload() -> None:
    result = one(b"[" + b" " * 2000 + b"]", limits=Limits(max_payload_bytes=1000))
    assert isinstance(result, Rejection)
    assert result.reason == R.TOO_LARGE


def test_topic_sensor_must_agree_with_payload() -> None:
    result = one(orjson.dumps(good()), key="TEMPIOT-A012")
    assert isinstance(result, Rejection)
    assert result.reason == R.SENSOR_MISMATCH
    doc = good()
    del doc["sensor_id"]
    accepted = one(orjson.dumps(doc), key="TEMPIOT-A011")
    assert isinstance(accepted, Accepted)


def test_limits_are_settings() -> None:
    strict = Limits(temperature=(0, 30), max_future=timedelta(0))
    result = one(orjson.dumps(good(temperature=31)), limits=strict)
    assert isinstance(result, Rejection)
    assert result.reason == R.OUT_OF_RANGE


def test_unknown_sensor_is_registered_by_convention_when_enabled() -> None:
    result = one(orjson.dumps(good(sensor_id="TEMPIOT-B123")), limits=Limits(auto_register=True))
    assert isinstance(result, Accepted)
    assert result.auto_registered
    assert result.reading.loc_id == "B123"


def test_more_than_two_decimals_are_rounded_half_up() -> None:
    result = one(orjson.dumps(good(temperature="22.125")))
    assert isinstance(result, Accepted)
    assert result.reading.temperature == Decimal("22.13")


def test_dead_letters_keep_the_original_bytes_or_the_item() -> None:
    raw = b'{"sensor_id": "TEMPIOT-A011", "temp'
    [(rejected, kept)] = validate_payload(
        raw,
        key_sensor_id=None,
        lookup=KNOWN.get,
        limits=Limits(),
        now=NOW,
        source="kafka",
        received_at=NOW,
    )
    assert isinstance(rejected, Rejection) and kept == raw
    items = [good(), good(humidity="wet")]
    results = validate_payload(
        orjson.dumps(items),
        key_sensor_id=None,
        lookup=KNOWN.get,
        limits=Limits(),
        now=NOW,
        source="kafka",
        received_at=NOW,
    )
    assert isinstance(results[1][0], Rejection)
    assert orjson.loads(results[1][1] or b"") == items[1]


# Regressions: inputs that once raised (stopping the ingest stage) or passed when they
# should not have.


def reading_text(**fields: str) -> bytes:
    """A reading's JSON with each field's value given as raw JSON text."""
    values = {
        "sensor_id": '"TEMPIOT-A011"',
        "capture_dt": '"2025-09-12T05:59:38Z"',
        "temperature": "22.1",
        "humidity": "77.7",
    }
    values.update(fields)
    return ("{" + ",".join(f'"{k}":{v}' for k, v in values.items()) + "}").encode()


@pytest.mark.parametrize(
    ("temperature", "reason"),
    [
        ('"999999999999999999999999999.999"', R.OUT_OF_RANGE),
        ('"-999999999999999999999999999.999"', R.OUT_OF_RANGE),
        ('"' + "9" * 64 + '"', R.OUT_OF_RANGE),
        ('"' + "9" * 65 + '"', R.WRONG_TYPE),
        ("1e999999", R.NOT_FINITE),
        ("-1E+400", R.NOT_FINITE),
        ("9" * 400, R.NOT_FINITE),
        ("123456789012345678901234567890", R.OUT_OF_RANGE),
        ('"1e2"', R.WRONG_TYPE),
        ('"2.21e1"', R.WRONG_TYPE),
        ('"٢٥.٥"', R.WRONG_TYPE),
        ('"２５"', R.WRONG_TYPE),
        ('"22,1"', R.WRONG_TYPE),
        ('"-Infinity"', R.NOT_FINITE),
        ("Infinity", R.NOT_FINITE),
        ("false", R.WRONG_TYPE),
        ("null", R.MISSING_FIELD),
        ("{}", R.WRONG_TYPE),
    ],
)
def test_numbers_of_any_size_or_script_are_rejected_not_raised(temperature: str, reason: R) -> None:
    result = one(reading_text(temperature=temperature))
    assert isinstance(result, Rejection), result
    assert result.reason == reason
    assert "temperature" in result.detail


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-0.0", Decimal("0")),
        ('"-0"', Decimal("0")),
        ('" +22.105 "', Decimal("22.11")),
        ("2.2105e1", Decimal("22.11")),
        ("22", Decimal("22")),
        ("1e-400", Decimal("0")),
    ],
)
def test_odd_but_valid_numbers(text: str, expected: Decimal) -> None:
    result = one(reading_text(temperature=text))
    assert isinstance(result, Accepted), result
    assert result.reading.temperature == expected
    assert not result.reading.temperature.is_signed()


def test_a_batch_longer_than_the_limit_is_one_rejection() -> None:
    raw = orjson.dumps([good()] * 1001)
    [(rejected, kept)] = validate_payload(
        raw,
        key_sensor_id=None,
        lookup=KNOWN.get,
        limits=Limits(),
        now=NOW,
        source="kafka",
        received_at=NOW,
    )
    assert isinstance(rejected, Rejection)
    assert rejected.reason == R.BATCH_TOO_LONG
    assert "1001" in rejected.detail and rejected.index is None
    assert kept == raw
    assert len(run(orjson.dumps([good()] * 1000))) == 1000
    assert one(orjson.dumps([{}] * 4), limits=Limits(max_batch_items=3)).reason == R.BATCH_TOO_LONG


@pytest.mark.parametrize(
    "raw",
    [
        b'{"sensor_id": "TEMPIOT-A011", "capture_dt": "2025-09-12T05:59:38Z",'
        b' "temperature": 20, "humidity": 50, "temperature": 99}',
        b'{"sensor_id": "TEMPIOT-A011", "capture_dt": "2025-09-12T05:59:38Z",'
        b' "temperature": 20, "humidity": 50, "extra": {"a": 1, "a": 1}}',
        b'[{"sensor_id": "TEMPIOT-A011"}, {"humidity": 1, "humidity": 1}]',
        b'{"sensor_id" : "TEMPIOT-A011", "sensor_id" : "TEMPIOT-A011"}',
        b'{"\\u003a": 1, ":": 2}',
        b'{"a:b": "c:d", "a:b": "c:d"}',
        b'{"a": NaN, "a": 1}',
    ],
)
def test_a_duplicate_key_anywhere_rejects_the_payload(raw: bytes) -> None:
    result = one(raw)
    assert isinstance(result, Rejection)
    assert result.reason == R.DUPLICATE_KEY
    assert "more than once" in result.detail


def test_a_row_format_key_next_to_its_current_name_is_a_duplicate() -> None:
    doc = {"sensor_id": "TEMPIOT-A011", "capture_dt": "2025-09-12 14:59:38", "t1": "22.1"}
    result = one(orjson.dumps({**doc, "t2": "77.7", "humidity": "10"}))
    assert isinstance(result, Rejection)
    assert result.reason == R.DUPLICATE_KEY


def test_colons_in_strings_are_not_mistaken_for_duplicate_keys() -> None:
    raw = (
        b'{"sensor_id": "TEMPIOT-A011", "capture_dt" :"2025-09-12T05:59:38Z",'
        b' "temperature": 22.1, "humidity": 77.7, "note": "a:b\\u003a\\"c:", "n:": {"x:": ":"}}'
    )
    assert isinstance(one(raw), Accepted)


@pytest.mark.parametrize("sensor_id", ["TEMPIOT-A011\n", "TEMPIOT-A011\r\n", "TEMPIOT-A011 "])
def test_a_sensor_id_must_match_as_a_whole(sensor_id: str) -> None:
    result = one(orjson.dumps(good(sensor_id=sensor_id)))
    assert isinstance(result, Rejection)
    assert result.reason == R.WRONG_TYPE
    doc = good()
    del doc["sensor_id"]
    assert one(orjson.dumps(doc), key=sensor_id).reason == R.WRONG_TYPE


@pytest.mark.parametrize(
    ("capture_dt", "reason"),
    [
        ("0001-01-01T00:00:00+14:00", R.STALE_TIMESTAMP),
        ("0001-01-01T00:00:00", R.STALE_TIMESTAMP),  # naive, in Asia/Seoul (+09:00)
        ("9999-12-31T23:59:59-14:00", R.FUTURE_TIMESTAMP),
        ("9999-12-31T23:59:59.999999-00:01", R.FUTURE_TIMESTAMP),
        ("2025-06-30T23:59:60Z", R.WRONG_TYPE),
        ("2025-02-30T00:00:00Z", R.WRONG_TYPE),
        ("2025-09-12T24:00:00Z", R.WRONG_TYPE),
        ("2025-09-12T05:59:38+14:01", R.WRONG_TYPE),
        ("2025-09-12T05:59:38+24:00", R.WRONG_TYPE),
        ("٢٠٢٥-09-12T05:59:38Z", R.WRONG_TYPE),
        ("2025-09-12T05:59:38.1234567890Z", R.WRONG_TYPE),
        ("2025-09-12", R.WRONG_TYPE),
        ("20250912T055938Z", R.WRONG_TYPE),
        ("2025-09-12t05:59:38z", R.WRONG_TYPE),
        ("2025-09-12T05:59:38Z" + " " * 50, R.WRONG_TYPE),
    ],
)
def test_times_at_the_calendars_edges_and_impossible_times(capture_dt: str, reason: R) -> None:
    result = one(orjson.dumps(good(capture_dt=capture_dt)))
    assert isinstance(result, Rejection), result
    assert result.reason == reason
    assert "capture_dt" in result.detail


@pytest.mark.parametrize(
    ("capture_dt", "expected"),
    [
        ("2025-09-12T05:59:38.123456789Z", datetime(2025, 9, 12, 5, 59, 38, 123456, UTC)),
        ("2025-09-12T05:59:38,5Z", datetime(2025, 9, 12, 5, 59, 38, 500000, UTC)),
        ("2025-09-12 14:59+09", datetime(2025, 9, 12, 5, 59, tzinfo=UTC)),
        ("2025-09-12T14:59:38+0900", datetime(2025, 9, 12, 5, 59, 38, tzinfo=UTC)),
        (" 2025-09-12T05:59:38-00:00 ", datetime(2025, 9, 12, 5, 59, 38, tzinfo=UTC)),
    ],
)
def test_accepted_time_forms(capture_dt: str, expected: datetime) -> None:
    result = one(orjson.dumps(good(capture_dt=capture_dt)))
    assert isinstance(result, Accepted), result
    assert result.reading.capture_dt == expected


def zoned(zone: str) -> dict[str, SensorRecord]:
    return {
        "TEMPIOT-Z001": SensorRecord(
            sensor=Sensor(sensor_id="TEMPIOT-Z001", loc_id="Z001"),
            location=Location(loc_id="Z001", factory="Abroad", timezone=zone),
            updated_at=NOW,
        )
    }


@pytest.mark.parametrize(
    ("zone", "wall_time", "expected"),
    [
        # Clocks set back: the wall time occurs twice; the earlier instant (offset before).
        ("Europe/Berlin", "2025-10-26 02:30:00", datetime(2025, 10, 26, 0, 30, tzinfo=UTC)),
        ("America/New_York", "2025-11-02 01:30:00", datetime(2025, 11, 2, 5, 30, tzinfo=UTC)),
        # Clocks set forward: the wall time never occurs; read with the offset before.
        ("Europe/Berlin", "2025-03-30 02:30:00", datetime(2025, 3, 30, 1, 30, tzinfo=UTC)),
        ("America/New_York", "2025-03-09 02:30:00", datetime(2025, 3, 9, 7, 30, tzinfo=UTC)),
        # Either side of the changes, the ordinary offsets.
        ("Europe/Berlin", "2025-10-26 03:30:00", datetime(2025, 10, 26, 2, 30, tzinfo=UTC)),
        ("Europe/Berlin", "2025-03-30 03:30:00", datetime(2025, 3, 30, 1, 30, tzinfo=UTC)),
    ],
)
def test_naive_times_in_a_zone_with_daylight_saving_time(
    zone: str, wall_time: str, expected: datetime
) -> None:
    doc = good(sensor_id="TEMPIOT-Z001", capture_dt=wall_time)
    [(result, _)] = validate_payload(
        orjson.dumps(doc),
        key_sensor_id=None,
        lookup=zoned(zone).get,
        limits=Limits(),
        now=expected + timedelta(hours=1),
        source="mqtt",
        received_at=NOW,
    )
    assert isinstance(result, Accepted), result
    assert result.reading.capture_dt == expected


def test_a_big_integer_batch_item_keeps_json_as_its_dead_letter() -> None:
    raw = (
        b'[{"sensor_id": "TEMPIOT-A011", "capture_dt": "2025-09-12T05:59:38Z",'
        b' "temperature": 123456789012345678901234567890, "humidity": 50},'
        b' {"sensor_id": "TEMPIOT-A011", "capture_dt": "2025-09-12T05:59:38Z",'
        b' "temperature": 20, "humidity": NaN, "n": 340282366920938463463374607431768211456}]'
    )
    results = validate_payload(
        raw,
        key_sensor_id=None,
        lookup=KNOWN.get,
        limits=Limits(),
        now=NOW,
        source="kafka",
        received_at=NOW,
    )
    [(big, big_kept), (nan, nan_kept)] = results
    assert isinstance(big, Rejection) and (big.reason, big.index) == (R.OUT_OF_RANGE, 0)
    assert orjson.loads(big_kept or b"")["temperature"] == pytest.approx(1.2345678901234568e29)
    assert isinstance(nan, Rejection) and (nan.reason, nan.index) == (R.NOT_FINITE, 1)
    assert nan_kept is not None and b'"humidity":NaN' in nan_kept
    assert json.loads(nan_kept)["n"] == pytest.approx(3.402823669209385e38)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, R.TOO_DEEP),
        (b"[" * 100_000, R.TOO_DEEP),
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, R.TOO_DEEP),
        (b"[" * 33 + b"]" * 33, R.TOO_DEEP),
        (b'"\\ud800"', R.MALFORMED_JSON),
        (b'{"sensor_id": "TEMPIOT-A011", "x": "\\udc00"}', R.MALFORMED_JSON),
        (b"\xef\xbb\xbf" + orjson.dumps(good()), R.MALFORMED_JSON),
        (b'{"sensor_id": "TEMPIOT-A011\x00"}', R.MALFORMED_JSON),
        (b"{1: 2}", R.MALFORMED_JSON),
        (b"\xed\xa0\x80", R.INVALID_UTF8),
    ],
)
def test_hostile_documents_are_rejected_whole(raw: bytes, reason: R) -> None:
    result = one(raw)
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert result.detail


def test_extra_fields_may_nest_up_to_the_limit() -> None:
    deep: object = 1
    for _ in range(30):  # 31 deep with the reading, 32 in a batch
        deep = [deep]
    batch = [good(extra=deep), good(capture_dt="2025-09-12T05:59:39Z", extra=deep)]
    assert [type(r) for r in run(orjson.dumps(batch))] == [Accepted, Accepted]
