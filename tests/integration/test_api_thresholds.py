"""The HTTP API's thresholds and operations endpoints, through HTTP, on the real PostgreSQL
and Kafka."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from schemas.thresholds import ThresholdRecord
from schemas.topics import topic_name
from tests.helpers import read_topic, value_of

pytestmark = pytest.mark.integration

OPERATOR = {"Authorization": "Bearer op-token"}
VIEWER = {"Authorization": "Bearer view-token"}


@pytest.fixture
def client(stack: Settings, kafka: KafkaSettings, db: DatabaseSettings) -> Iterator[TestClient]:
    settings = stack.model_copy(
        update={
            "kafka": kafka,
            "db": db,
            "api": stack.api.model_copy(
                update={"tokens": {"op-token": "operator", "view-token": "viewer"}}
            ),
        }
    )
    with TestClient(create_app(settings)) as c:
        yield c


PRODUCTION = [
    {
        "threshold_type": "pcv_temperature",
        "level": "green",
        "min_value": "0.00",
        "max_value": "30.90",
    },
    {
        "threshold_type": "pcv_temperature",
        "level": "yellow",
        "min_value": "31.00",
        "max_value": "32.90",
    },
    {"threshold_type": "pcv_temperature", "level": "orange", "min_value": "33.00"},
]


def test_crud_with_the_original_contract_and_publication(
    client: TestClient, kafka: KafkaSettings
) -> None:
    ids = []
    for band in PRODUCTION:
        r = client.post("/api/v1/thresholds/", json=band, headers=OPERATOR)
        assert r.status_code == 201, r.text
        ids.append(r.json()["threshold_id"])
    listed = client.get("/api/v1/thresholds/", params={"skip": 1, "limit": 1}).json()
    assert [t["threshold_id"] for t in listed] == [ids[1]]
    by_type = client.get("/api/v1/thresholds/type/pcv_temperature").json()
    assert [t["level"] for t in by_type] == ["green", "yellow", "orange"]
    assert client.get("/api/v1/thresholds/type/humidity").json() == []
    one = client.get(f"/api/v1/thresholds/{ids[2]}").json()
    assert (one["min_value"], one["max_value"]) == ("33.00", None)

    r = client.put(f"/api/v1/thresholds/{ids[0]}", json={"max_value": "30.50"}, headers=OPERATOR)
    assert r.status_code == 200 and r.json()["max_value"] == "30.50"
    assert r.json()["min_value"] == "0.00"  # partial: the rest is kept

    r = client.delete(f"/api/v1/thresholds/{ids[1]}", headers=OPERATOR)
    assert r.status_code == 200
    assert client.get(f"/api/v1/thresholds/{ids[1]}").status_code == 404

    msgs = read_topic(
        kafka, topic_name("thresholds", kafka.topic_prefix), until=lambda m: len(m) >= 5
    )
    records = [ThresholdRecord.model_validate_json(value_of(m)) for m in msgs]
    assert [(r.threshold.threshold_id, r.deleted) for r in records] == [
        (ids[0], False),
        (ids[1], False),
        (ids[2], False),
        (ids[0], False),
        (ids[1], True),
    ]
    assert records[3].threshold.max_value == 30.5


def test_an_invalid_merged_update_is_a_422_and_stores_nothing(client: TestClient) -> None:
    created = client.post("/api/v1/thresholds/", json=PRODUCTION[1], headers=OPERATOR).json()
    r = client.put(
        f"/api/v1/thresholds/{created['threshold_id']}", json={"min_value": "40"}, headers=OPERATOR
    )
    assert r.status_code == 422
    assert "max_value must be greater than min_value" in r.json()["error"]["message"]
    after = client.get(f"/api/v1/thresholds/{created['threshold_id']}").json()
    assert after["min_value"] == "31.00"


def test_writes_need_a_token_with_the_role(client: TestClient) -> None:
    band = PRODUCTION[0]
    r = client.post("/api/v1/thresholds/", json=band)
    assert r.status_code == 401 and r.json()["error"]["status"] == 401
    assert (
        client.post(
            "/api/v1/thresholds/", json=band, headers={"Authorization": "Bearer nope"}
        ).status_code
        == 401
    )
    r = client.post("/api/v1/thresholds/", json=band, headers=VIEWER)
    assert r.status_code == 403
    assert client.delete("/api/v1/thresholds/1").status_code == 401
    assert client.get("/api/v1/thresholds/").status_code == 200  # reads are open by default


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/api/v1/thresholds/type/pressure", None),
        ("get", "/api/v1/thresholds/type/x' OR '1'='1", None),
        ("get", "/api/v1/thresholds/1 OR 1=1", None),
        ("get", "/api/v1/thresholds/99999999999999999999999", None),
        ("get", "/api/v1/thresholds/?skip=-1", None),
        ("get", "/api/v1/thresholds/?limit=abc", None),
        ("post", "/api/v1/thresholds/", {"threshold_type": "humidity", "level": "purple"}),
        (
            "post",
            "/api/v1/thresholds/",
            {"threshold_type": "humidity", "level": "red", "min_value": "5", "max_value": "1"},
        ),
        (
            "post",
            "/api/v1/thresholds/",
            {"threshold_type": "humidity", "level": "red", "min_value": "1e400"},
        ),
        (
            "post",
            "/api/v1/thresholds/",
            {"threshold_type": "humidity", "level": "red", "min_value": "NaN"},
        ),
        ("put", "/api/v1/thresholds/424242", {"level": "red"}),
    ],
)
def test_bad_requests_answer_4xx_with_one_error_body(
    client: TestClient, method: str, path: str, body: object
) -> None:
    r = client.request(method, path, json=body, headers=OPERATOR)
    assert 400 <= r.status_code < 500, r.text
    error = r.json()["error"]
    assert error["status"] == r.status_code and error["message"]


def test_operations_endpoints(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "checks": {"database": True, "kafka": True}}
    assert client.get("/metrics").status_code == 200
    assert "/api/v1/thresholds/" in client.get("/openapi.json").json()["paths"]
