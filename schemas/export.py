"""JSON Schema files of the wire format, for gateway vendors to validate against."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.alerts import AlertEvent
from schemas.readings import OriginalRowPayload, ReadingPayload

SCHEMA_DIR = Path(__file__).resolve().parent / "json"


def reading_schema() -> dict[str, Any]:
    """One reading, in the documented format or the original row format."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://iotmon.dev/schemas/reading.schema.json",
        "title": "Sensor reading",
        "anyOf": [
            ReadingPayload.model_json_schema(mode="validation"),
            OriginalRowPayload.model_json_schema(mode="validation"),
        ],
    }


def batch_schema() -> dict[str, Any]:
    single = reading_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://iotmon.dev/schemas/reading-batch.schema.json",
        "title": "Batch of sensor readings",
        "description": "A JSON array of readings, published as one message.",
        "type": "array",
        "minItems": 1,
        "items": {k: v for k, v in single.items() if not k.startswith("$")},
    }


def alert_event_schema() -> dict[str, Any]:
    """One record of the alerts topic (a public contract for plant systems that subscribe)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://iotmon.dev/schemas/alert-event.schema.json",
        "title": "Alert event",
        "description": "One state change of an alert (raised, escalated, de-escalated, "
        "resolved), keyed by sensor id on the alerts topic.",
        **AlertEvent.model_json_schema(mode="serialization"),
    }


def write_json_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in (
        ("reading.schema.json", reading_schema()),
        ("reading-batch.schema.json", batch_schema()),
        ("alert-event.schema.json", alert_event_schema()),
    ):
        path = directory / name
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written
