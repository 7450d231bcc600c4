from __future__ import annotations

import json

import jsonschema
import pytest

from schemas.export import SCHEMA_DIR, alert_event_schema, batch_schema, reading_schema

pytestmark = pytest.mark.unit


def test_published_files_match_the_models() -> None:
    """`iotmon schema` output is committed; a model change must re-export it."""
    assert json.loads((SCHEMA_DIR / "reading.schema.json").read_text()) == reading_schema()
    assert json.loads((SCHEMA_DIR / "reading-batch.schema.json").read_text()) == batch_schema()
    assert json.loads((SCHEMA_DIR / "alert-event.schema.json").read_text()) == alert_event_schema()


def test_an_alert_event_on_the_topic_validates_against_its_schema() -> None:
    from datetime import UTC, datetime  # noqa: PLC0415
    from decimal import Decimal  # noqa: PLC0415
    from uuid import uuid4  # noqa: PLC0415

    from schemas.alerts import AlertEvent, AlertKind, AlertTransition, with_location  # noqa: PLC0415
    from schemas.common import Status  # noqa: PLC0415
    from schemas.master import Location  # noqa: PLC0415

    event = AlertEvent(
        event_id=uuid4(),
        alert_id=uuid4(),
        kind=AlertKind.THRESHOLD,
        transition=AlertTransition.RAISED,
        sensor_id="TEMPIOT-A011",
        loc_id="A011",
        metric="pcv_temperature",
        level=Status.CRITICAL,
        measured_value=Decimal("33.40"),
        threshold_id=3,
        threshold_level="orange",
        threshold_min=Decimal("33.00"),
        threshold_max=None,
        reading_time=datetime.now(UTC),
        decided_at=datetime.now(UTC),
        message="hot",
    )
    located = with_location(event, Location(loc_id="A011", factory="SinPyeong", floor=1))
    doc = json.loads(located.model_dump_json())
    jsonschema.validate(doc, alert_event_schema())
    assert (doc["factory"], doc["floor"]) == ("SinPyeong", 1)


@pytest.mark.parametrize(
    "doc",
    [
        {
            "sensor_id": "TEMPIOT-A011",
            "capture_dt": "2025-09-12T05:59:38.837Z",
            "temperature": 22.1,
            "humidity": 77.7,
            "pcv_temperature": 23.8,
        },
        {
            "sensor_id": "TEMPIOT-A011",
            "capture_dt": "2025-09-12T05:59:38Z",
            "temperature": "22.1",
            "humidity": "77.7",
        },
        {
            "sensor_id": "TEMPIOT-A011",
            "capture_dt": "2025-09-12 14:59:38",
            "t1": "22.1",
            "t2": "77.7",
            "t3": "23.8",
        },
    ],
)
def test_documented_payloads_validate(doc: dict[str, object]) -> None:
    jsonschema.validate(doc, reading_schema())
    jsonschema.validate([doc, doc], batch_schema())


@pytest.mark.parametrize(
    "doc",
    [
        {"sensor_id": "TEMPIOT-A011", "capture_dt": "2025-09-12T05:59:38Z", "humidity": 77.7},
        {
            "sensor_id": "TEMPIOT-A011",
            "capture_dt": "2025-09-12T05:59:38Z",
            "temperature": "hot",
            "humidity": 77.7,
        },
        {
            "sensor_id": "bad id!",
            "capture_dt": "2025-09-12T05:59:38Z",
            "temperature": 1,
            "humidity": 2,
        },
    ],
)
def test_bad_payloads_do_not_validate(doc: dict[str, object]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, reading_schema())
