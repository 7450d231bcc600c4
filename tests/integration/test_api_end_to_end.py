"""The original system's threshold example, end to end through HTTP.

The bands are created with `POST /api/v1/thresholds/`. Readings then go through a real
`iotmon worker` and the real sinks, and `GET /api/v1/realtime/` must answer the statuses
that the original documented:

- perceived temperature 30.90 is `normal`;
- 31.00 and 32.90 are `warning`;
- 33.00 is `critical`;
- a metric without thresholds is `null`.

The alert raised by the critical reading is then listed, acknowledged and resolved through
the alerts endpoints.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.masterdata import import_master_data, load_file
from schemas.readings import Reading
from tests.api_support import OPERATOR, api_settings
from tests.helpers import wait_for
from tests.pipeline import Pipeline

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "infra" / "examples"
BANDS = [
    {
        "threshold_type": "pcv_temperature",
        "level": "green",
        "min_value": "0.00",
        "max_value": "30.90",
        "hold_seconds": 0,
        "clear_seconds": 0,
    },
    {
        "threshold_type": "pcv_temperature",
        "level": "yellow",
        "min_value": "31.00",
        "max_value": "32.90",
        "hold_seconds": 0,
        "clear_seconds": 0,
    },
    {
        "threshold_type": "pcv_temperature",
        "level": "orange",
        "min_value": "33.00",
        "hold_seconds": 0,
        "clear_seconds": 0,
    },
]
VALUES = {
    "TEMPIOT-A011": "30.90",
    "TEMPIOT-A012": "31.00",
    "TEMPIOT-A031": "32.90",
    "TEMPIOT-B011": "33.00",
}


@pytest.fixture
def client(stack: Settings, kafka: KafkaSettings, db: DatabaseSettings) -> Iterator[TestClient]:
    import_master_data(db, kafka, load_file(EXAMPLES / "locations.csv"))
    with TestClient(create_app(api_settings(stack, kafka, db))) as c:
        yield c


def test_original_threshold_example_through_the_pipeline(
    client: TestClient,
    stack: Settings,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    test_id: str,
    tmp_path: Path,
) -> None:
    for band in BANDS:
        r = client.post("/api/v1/thresholds/", json=band, headers=OPERATOR)
        assert r.status_code == 201, r.text
    pipeline = Pipeline(stack, kafka, db, test_id, tmp_path)
    try:
        pipeline.worker()
        pipeline.wait_ready()
        at = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
        pipeline.send(
            Reading(
                sensor_id=sensor,
                loc_id=sensor[-4:],
                capture_dt=at,
                temperature=Decimal("29.0"),
                humidity=Decimal("55.0"),
                pcv_temperature=Decimal(pcv),
                source="kafka",
                received_at=at,
            )
            for sensor, pcv in VALUES.items()
        )

        def statuses() -> dict[str, tuple[str | None, str | None]]:
            body = client.get("/api/v1/realtime/").json()
            return {
                m["sensor_id"]: (
                    m["metrics"]["pcv_temperature"]["status"],
                    m["metrics"]["humidity"]["status"],
                )
                for m in body["measurements"]
            }

        wait_for(lambda: len(statuses()) == 4, timeout=60, what="four sensors in /realtime")
        assert statuses() == {
            "TEMPIOT-A011": ("normal", None),
            "TEMPIOT-A012": ("warning", None),
            "TEMPIOT-A031": ("warning", None),
            "TEMPIOT-B011": ("critical", None),
        }
        values = {
            m["sensor_id"]: m["metrics"]["pcv_temperature"]["value"]
            for m in client.get("/api/v1/realtime/").json()["measurements"]
        }
        assert values == {
            "TEMPIOT-A011": "30.9",
            "TEMPIOT-A012": "31.0",
            "TEMPIOT-A031": "32.9",
            "TEMPIOT-B011": "33.0",
        }

        # The warnings and the critical reading raised alerts (no hold duration).
        def alerts() -> list[dict[str, object]]:
            return list(client.get("/api/v1/alerts/", params={"state": "active"}).json())

        wait_for(lambda: len(alerts()) == 3, timeout=60, what="three active alerts")
        levels = {a["sensor_id"]: a["alert_level"] for a in alerts()}
        assert levels == {
            "TEMPIOT-A012": "warning",
            "TEMPIOT-A031": "warning",
            "TEMPIOT-B011": "critical",
        }
        critical = next(a for a in alerts() if a["alert_level"] == "critical")
        ack = client.post(
            f"/api/v1/alerts/{critical['alert_id']}/ack", json={"note": "on it"}, headers=OPERATOR
        )
        assert ack.status_code == 200 and ack.json()["acknowledged_by"] == "token:operator"
        done = client.post(
            f"/api/v1/alerts/{critical['alert_id']}/resolve",
            json={"note": "cooled"},
            headers=OPERATOR,
        )
        assert done.status_code == 200 and done.json()["state"] == "resolved"
        assert {a["sensor_id"] for a in alerts()} == {"TEMPIOT-A012", "TEMPIOT-A031"}
        stats = client.get("/api/v1/alerts/stats").json()
        assert stats["total"] == 3 and stats["acknowledged"] == 1
    finally:
        pipeline.close()
