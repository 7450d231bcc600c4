from __future__ import annotations

import json

import jsonschema
import pytest

from schemas.export import SCHEMA_DIR, batch_schema, reading_schema

pytestmark = pytest.mark.unit


def test_published_files_match_the_models() -> None:
    """`iotmon schema` output is committed; a model change must re-export it."""
    assert json.loads((SCHEMA_DIR / "reading.schema.json").read_text()) == reading_schema()
    assert json.loads((SCHEMA_DIR / "reading-batch.schema.json").read_text()) == batch_schema()


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
