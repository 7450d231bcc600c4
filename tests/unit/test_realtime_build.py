"""Rendering a realtime answer from its rows, with and without the memo of measurements."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from api.latest import LatestStatuses
from api.routers.realtime import Memo, RealtimeResponse, _build
from iotmon.settings import KafkaSettings
from schemas.common import Status
from schemas.readings import SensorStatus


def row(sensor: str, loc: str, t: str, at: datetime) -> tuple[Any, ...]:
    """A row as the realtime query returns it."""
    return (
        sensor,
        at,
        Decimal(t),
        Decimal("55.50"),
        None,
        "normal",
        None,
        None,
        "F1",
        "B1",
        2,
        loc,
        "press line",
        "Asia/Seoul",
        at + timedelta(milliseconds=50),
    )


def newer(
    rows: list[tuple[Any, ...]], sensor: str, loc: str, t: str, seconds: int
) -> tuple[bytes | None, bytes | None]:
    at = rows[0][1] + timedelta(seconds=seconds)
    status = SensorStatus(
        sensor_id=sensor,
        loc_id=loc,
        capture_dt=at,
        temperature=Decimal(t),
        humidity=Decimal("40"),
        pcv_temperature=Decimal("31.25"),
        pcv_computed=True,
        temperature_status=Status.WARNING,
        humidity_status=None,
        pcv_temperature_status=Status.CRITICAL,
        updated_at=at,
    )
    return (sensor.encode(), status.model_dump_json().encode())


def measurements(body: bytes) -> dict[str, dict[str, Any]]:
    answer = RealtimeResponse.model_validate_json(body)  # the documented shape
    assert answer.measurements
    return {m["sensor_id"]: m for m in orjson.loads(body)["measurements"]}


def without_age(body: bytes) -> dict[str, dict[str, Any]]:
    shown = measurements(body)
    for m in shown.values():
        assert m.pop("age_seconds") >= 0
        m.pop("stale")
    return shown


def rows() -> list[tuple[Any, ...]]:
    """Two rows captured 30 s ago."""
    at = datetime.now(UTC) - timedelta(seconds=30)
    return [row("TEMPIOT-A011", "A011", "22.10", at), row("TEMPIOT-A012", "A012", "-3.25", at)]


def test_a_memo_gives_the_same_answer_as_building_everything() -> None:
    two = rows()
    memo: Memo = [None] * len(two)
    plain = _build(two, 300, None)
    first = _build(two, 300, None, memo)
    again = _build(two, 300, None, memo)
    assert all(slot is not None for slot in memo)
    assert without_age(plain) == without_age(first) == without_age(again)
    assert measurements(again)["TEMPIOT-A012"]["metrics"]["temperature"]["value"] == "-3.25"
    assert orjson.loads(again)["capture_dt"] == orjson.loads(plain)["capture_dt"]


def test_age_and_stale_are_computed_at_every_rendering() -> None:
    two = rows()
    memo: Memo = [None] * len(two)
    fresh = measurements(_build(two, 300, None, memo))
    assert not fresh["TEMPIOT-A011"]["stale"]
    stale = measurements(_build(two, 10, None, memo))  # the memo holds every row
    assert stale["TEMPIOT-A011"]["stale"]
    assert stale["TEMPIOT-A011"]["age_seconds"] >= fresh["TEMPIOT-A011"]["age_seconds"] >= 30


def test_a_row_is_built_again_when_the_status_it_shows_changes() -> None:
    two = rows()
    statuses = LatestStatuses(KafkaSettings())
    memo: Memo = [None] * len(two)
    before = measurements(_build(two, 300, statuses, memo))
    assert before["TEMPIOT-A011"]["metrics"]["temperature"]["value"] == "22.1"

    statuses.apply([newer(two, "TEMPIOT-A011", "A011", "35.5", 10)])
    shown = measurements(_build(two, 300, statuses, memo))
    assert shown["TEMPIOT-A011"]["metrics"]["temperature"] == {"value": "35.5", "status": "warning"}
    assert shown["TEMPIOT-A011"]["metrics"]["pcv_temperature"]["value"] == "31.25"
    assert shown["TEMPIOT-A011"]["age_seconds"] < before["TEMPIOT-A011"]["age_seconds"]
    assert shown["TEMPIOT-A012"] == {
        **before["TEMPIOT-A012"],
        "age_seconds": shown["TEMPIOT-A012"]["age_seconds"],
    }

    statuses.apply([newer(two, "TEMPIOT-A011", "A011", "36.0", 20)])
    latest = measurements(_build(two, 300, statuses, memo))
    assert latest["TEMPIOT-A011"]["metrics"]["temperature"]["value"] == "36.0"
    # The same as building without a memo.
    assert without_age(_build(two, 300, statuses, memo)) == without_age(_build(two, 300, statuses))
