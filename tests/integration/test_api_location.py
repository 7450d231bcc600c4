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


def sensor_records(kafka: KafkaSettings, key: bytes, count: int) -> list[SensorRecord | None]:
    """The last ``count`` records of one sensor on the sensors topic (None for a tombstone)."""
    msgs = read_topic(
        kafka,
        topic_name("sensors", kafka.topic_prefix),
        until=lambda m: sum(x.key() == key for x in m) >= count,
    )
    mine = [m for m in msgs if m.key() == key]
    return [
        None if m.value() is None else SensorRecord.model_validate_json(value_of(m))
        for m in mine[-count:]
    ]


def test_put_changes_the_merged_sensor_and_location(
    client: TestClient, kafka: KafkaSettings
) -> None:
    url = "/api/v1/location/TEMPIOT-A012"
    assert client.put(url, json={"location": {"area": "Paint"}}).status_code == 401
    r = client.put(url, json={"location": {"area": "Paint"}}, headers=OPERATOR)
    assert r.status_code == 200, r.text
    assert (r.json()["area"], r.json()["building"], r.json()["loc_id"]) == ("Paint", "MX-1", "A012")
    # Moving the sensor to a new location creates it from the patch.
    r = client.put(
        url,
        json={
            "sensor": {"loc_id": "A099", "name": "moved"},
            "location": {"factory": "SinPyeong", "building": "MX-9", "floor": 9},
        },
        headers=OPERATOR,
    )
    assert r.status_code == 200, r.text
    assert (r.json()["loc_id"], r.json()["floor"], r.json()["sensor_name"]) == ("A099", 9, "moved")
    last = sensor_records(kafka, b"TEMPIOT-A012", 1)[0]
    assert last is not None and last.location.loc_id == "A099"
    # A new location without a factory, an unknown zone, unknown fields: 422, nothing stored.
    for body, word in (
        ({"sensor": {"loc_id": "Z001"}}, "factory"),
        ({"location": {"timezone": "Mars/Olympus"}}, "time zone"),
        ({"location": {"colour": "red"}}, "colour"),
        ({"sensor": {"loc_id": "../etc"}}, "loc_id"),
    ):
        bad = client.put(url, json=body, headers=OPERATOR)
        assert bad.status_code == 422, (body, bad.text)
        assert word in bad.text, (body, bad.text)
    assert client.get("/api/v1/location/TEMPIOT-A012").json()["loc_id"] == "A099"
    assert client.put("/api/v1/location/TEMPIOT-NONE", json={}, headers=OPERATOR).status_code == 404


def test_delete_unregisters_and_publishes_the_deletion(
    client: TestClient, kafka: KafkaSettings
) -> None:
    url = "/api/v1/location/TEMPIOT-A031"
    assert client.delete(url).status_code == 401
    r = client.delete(url, headers=OPERATOR)
    assert r.status_code == 200 and r.json()["loc_id"] == "A031"
    assert client.get(url).status_code == 404
    assert client.delete(url, headers=OPERATOR).status_code == 404
    record = sensor_records(kafka, b"TEMPIOT-A031", 1)[0]
    assert record is not None and record.deleted
    # The location itself can go once no sensor is installed there.
    busy = client.delete("/api/v1/location/loc/A011", headers=OPERATOR)
    assert busy.status_code == 409 and "sensor" in busy.json()["error"]["message"]
    assert client.delete("/api/v1/location/loc/A031", headers=OPERATOR).status_code == 200
    assert client.delete("/api/v1/location/loc/A031", headers=OPERATOR).status_code == 404


def test_csv_upload(client: TestClient, kafka: KafkaSettings) -> None:
    csv_text = (
        "sensor_id,loc_id,factory,building,floor,area,name\n"
        "TEMPIOT-C201,C201,JangNim,JN-C,1,Press,press 1\n"
        "TEMPIOT-C202,C202,JangNim,JN-C,1,Press,press 2\n"
    )
    url = "/api/v1/location/upload"
    files = {"file": ("new.csv", csv_text.encode(), "text/csv")}
    assert client.post(url, files=files).status_code == 401
    r = client.post(url, files=files, headers=OPERATOR)
    assert r.status_code == 200, r.text
    assert r.json() == {"locations": 2, "sensors": 2, "published": 2}
    assert client.get("/api/v1/location/TEMPIOT-C202").json()["area"] == "Press"
    assert sensor_records(kafka, b"TEMPIOT-C201", 1)[0] is not None
    # All or nothing: one bad row stores none of them, and the message names the row.
    bad_rows = (
        "sensor_id,loc_id,factory,floor\n"
        "TEMPIOT-C301,C301,JangNim,1\n"
        "TEMPIOT-C302,C302,JangNim,upstairs\n"
    )
    r = client.post(url, files={"file": ("bad.csv", bad_rows.encode())}, headers=OPERATOR)
    assert r.status_code == 422 and "row 2" in r.json()["error"]["message"]
    assert client.get("/api/v1/location/TEMPIOT-C301").status_code == 404
    for content, word in (
        (b"\xff\xfe\x00garbage", "UTF-8"),
        (b"", "no rows"),
        (b"sensor_id,loc_id,factory,colour\nS-1,S001,F,red\n", "colour"),
    ):
        r = client.post(url, files={"file": ("x.csv", content)}, headers=OPERATOR)
        assert r.status_code == 422 and word in r.json()["error"]["message"], r.text
    assert client.post(url, headers=OPERATOR).status_code == 422
