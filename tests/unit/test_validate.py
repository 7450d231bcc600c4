from __future__ import annotations

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
