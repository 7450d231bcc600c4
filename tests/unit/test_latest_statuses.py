"""Which statuses the API holds from the latest topic, and when an answer uses one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from api.latest import LatestStatuses
from iotmon.settings import KafkaSettings
from schemas.common import Status
from schemas.readings import SensorStatus

T0 = datetime(2026, 7, 1, 3, 0, tzinfo=UTC)


def status(second: int, updated_s: int = 0, loc: str = "A011", t: str = "25") -> SensorStatus:
    at = T0 + timedelta(seconds=second)
    return SensorStatus(
        sensor_id="TEMPIOT-A011",
        loc_id=loc,
        capture_dt=at,
        temperature=Decimal(t),
        humidity=Decimal("50"),
        pcv_temperature=None,
        pcv_computed=False,
        temperature_status=Status.NORMAL,
        humidity_status=None,
        pcv_temperature_status=None,
        updated_at=at + timedelta(seconds=updated_s),
    )


def records(*statuses: SensorStatus) -> list[tuple[bytes | None, bytes | None]]:
    return [(s.sensor_id.encode(), s.model_dump_json().encode()) for s in statuses]


def temperature(held: LatestStatuses) -> Decimal | None:
    got = held.fresher("TEMPIOT-A011", "A011", (T0, T0))
    return None if got is None else got.temperature


def test_a_status_replaces_the_held_one_only_if_more_recent_by_the_sinks_rule() -> None:
    held = LatestStatuses(KafkaSettings())
    assert held.apply(records(status(10, t="1"), status(20, t="2"))) == 2
    assert held.version == 1
    assert temperature(held) == Decimal("2.00")  # the last one read
    # Older, or the same reading and evaluation again: the held one stays.
    held.apply(records(status(19, t="3")))
    assert temperature(held) == Decimal("2.00")
    held.apply(records(status(20, t="4")))
    assert temperature(held) == Decimal("2.00")
    # The same reading evaluated later (a threshold changed) replaces it.
    held.apply(records(status(20, updated_s=5, t="5")))
    assert temperature(held) == Decimal("5.00")
    assert held.version == 4
    # Nothing to take: no new version.
    assert held.apply([(None, b"{}"), (b"TEMPIOT-A011", None)]) == 0
    assert held.version == 4


def test_a_record_that_is_not_a_status_of_its_key_is_skipped() -> None:
    held = LatestStatuses(KafkaSettings())
    held.apply(records(status(10, t="1")))
    assert temperature(held) == Decimal("1.00")
    held.apply([(b"TEMPIOT-A011", b'{"sensor_id": "TEMPIOT-A011"}')])
    assert temperature(held) == Decimal("1.00")
    held.apply([(b"TEMPIOT-A011", records(status(30).model_copy(update={"sensor_id": "X"}))[0][1])])
    assert temperature(held) == Decimal("1.00")
    assert held.skipped == 2


def test_values_are_rounded_as_the_table_rounds_them() -> None:
    held = LatestStatuses(KafkaSettings())
    held.apply(records(status(1, t="-4.005")))
    assert str(temperature(held)) == "-4.01"


def test_a_status_is_used_only_for_a_row_it_is_newer_than_at_its_location() -> None:
    held = LatestStatuses(KafkaSettings())
    held.apply(records(status(10, loc="A012")))
    assert held.fresher("TEMPIOT-A011", "A011", (T0, T0)) is None  # another location
    assert held.fresher("TEMPIOT-A012", "A012", (T0, T0)) is None  # another sensor
    at = T0 + timedelta(seconds=10)
    assert held.fresher("TEMPIOT-A011", "A012", (at, at)) is None  # the row has it
    assert held.fresher("TEMPIOT-A011", "A012", (T0, T0)) is not None
    assert len(held) == 1


def test_a_record_without_a_key_or_a_value_is_not_taken() -> None:
    held = LatestStatuses(KafkaSettings())
    version = held.version
    assert held.apply([(None, status(1).model_dump_json().encode()), (b"TEMPIOT-A011", None)]) == 0
    assert len(held) == 0 and held.version == version
    assert held.apply(records(status(2))) == 1
    assert len(held) == 1 and held.version == version + 1
