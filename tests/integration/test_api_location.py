"""`/api/v1/location` (the original contract) through HTTP on the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.masterdata import import_master_data, load_file
from schemas.master import SensorRecord
from schemas.topics import topic_name
from tests.helpers import read_topic, value_of

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "infra" / "examples"
OPERATOR = {"Authorization": "Bearer op"}


@pytest.fixture
def client(stack: Settings, kafka: KafkaSettings, db: DatabaseSettings) -> Iterator[TestClient]:
    import_master_data(db, kafka, load_file(EXAMPLES / "locations.csv"))
    settings = stack.model_copy(
        update={
            "kafka": kafka,
            "db": db,
            "api": stack.api.model_copy(update={"tokens": {"op": "operator"}}),
        }
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_lookups_of_the_original_contract(client: TestClient) -> None:
    one = client.get("/api/v1/location/TEMPIOT-A011").json()
    assert {k: one[k] for k in ("loc_id", "factory", "building", "floor", "area", "sensor_id")} == {
        "loc_id": "A011",
        "factory": "SinPyeong",
        "building": "MX-1",
        "floor": 1,
        "area": "Storage",
        "sensor_id": "TEMPIOT-A011",
    }
    batch = client.get("/api/v1/location/batch/TEMPIOT-A011,TEMPIOT-B011,TEMPIOT-NONE").json()
    assert [r["sensor_id"] for r in batch] == ["TEMPIOT-A011", "TEMPIOT-B011"]
    assert [r["sensor_id"] for r in client.get("/api/v1/location/loc/A031").json()] == [
        "TEMPIOT-A031"
    ]
    locs = client.get("/api/v1/location/loc/batch/A011,B011").json()
    assert [r["loc_id"] for r in locs] == ["A011", "B011"]
    assert len(client.get("/api/v1/location/").json()) == 4
    filtered = client.get("/api/v1/location/", params={"factory": "SinPyeong", "floor": 1})
    assert [r["sensor_id"] for r in filtered.json()] == [
        "TEMPIOT-A011",
        "TEMPIOT-A012",
        "TEMPIOT-A031",
    ]
    assert client.get("/api/v1/location/", params={"factory": "Nowhere"}).json() == []
    paged = client.get("/api/v1/location/", params={"skip": 3, "limit": 10}).json()
    assert [r["sensor_id"] for r in paged] == ["TEMPIOT-B011"]


def test_upsert_stores_and_publishes(client: TestClient, kafka: KafkaSettings) -> None:
    body = {
        "sensor": {"sensor_id": "TEMPIOT-C101", "loc_id": "C101", "name": "dock"},
        "location": {
            "loc_id": "C101",
            "factory": "JangNim",
            "building": "JN-B",
            "floor": 3,
            "area": "Dock",
        },
    }
    assert client.post("/api/v1/location/", json=body).status_code == 401
    r = client.post("/api/v1/location/", json=body, headers=OPERATOR)
    assert r.status_code == 200, r.text
    assert r.json()["factory"] == "JangNim"
    assert client.get("/api/v1/location/TEMPIOT-C101").json()["area"] == "Dock"
    msgs = read_topic(
        kafka,
        topic_name("sensors", kafka.topic_prefix),
        until=lambda m: any(x.key() == b"TEMPIOT-C101" for x in m),
    )
    record = next(
        SensorRecord.model_validate_json(value_of(m)) for m in msgs if m.key() == b"TEMPIOT-C101"
    )
    assert record.location.building == "JN-B"


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/location/TEMPIOT-ZZZZ",
        "/api/v1/location/loc/Q999",
        "/api/v1/location/x' OR '1'='1",
        "/api/v1/location/batch/a,b;DROP TABLE sensors",
        "/api/v1/location/loc/batch/" + ",".join(["A011"] * 201),
        "/api/v1/location/?floor=first",
        "/api/v1/location/?limit=0",
    ],
)
def test_unknown_and_bad_lookups_are_4xx(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["message"]
    assert len(client.get("/api/v1/location/").json()) == 4  # nothing was harmed
