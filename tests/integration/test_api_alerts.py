"""`/api/v1/alerts` through HTTP on the real PostgreSQL, with rows written by the real
alerts sink code from alert events."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from uuid import UUID, uuid4

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.masterdata import import_master_data, load_file
from schemas.alerts import AlertEvent, AlertKind, AlertTransition
from schemas.common import Status
from stream_apps.sinks.alerts import AlertsWriter
from tests.api_support import ADMIN, OPERATOR, VIEWER, api_settings

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "infra" / "examples"
NOW = datetime.now(UTC).replace(microsecond=0)
OLD = datetime(2024, 9, 22, 1, 0, tzinfo=UTC)  # 10:00 KST


def event(
    alert_id: UUID,
    transition: AlertTransition,
    at: datetime,
    *,
    sensor: str = "TEMPIOT-A011",
    loc: str = "A011",
    metric: str | None = "pcv_temperature",
    level: Status = Status.WARNING,
    value: str = "31.50",
) -> AlertEvent:
    return AlertEvent(
        event_id=uuid4(),
        alert_id=alert_id,
        kind=AlertKind.THRESHOLD if metric else AlertKind.SENSOR_SILENT,
        transition=transition,
        sensor_id=sensor,
        loc_id=loc,
        metric=metric,
        level=level,
        measured_value=Decimal(value),
        threshold_id=7 if metric else None,
        threshold_level="yellow" if level is Status.WARNING else "orange",
        threshold_min=Decimal("31.00") if level is Status.WARNING else Decimal("33.00"),
        threshold_max=Decimal("32.90") if level is Status.WARNING else None,
        reading_time=at,
        decided_at=at,
        message=f"{metric} {value} is {level.value}",
    )


def sink(db: DatabaseSettings, events: list[AlertEvent]) -> None:
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        with conn.transaction():
            AlertsWriter().write(conn, events)


# Four alerts: A (A011, active, escalated to critical), B (A012, resolved by the system),
# C (B011 in JangNim, humidity, two years ago, resolved), D (A011, sensor silent, today).
A, B, C, D = (uuid4() for _ in range(4))


@pytest.fixture
def client(stack: Settings, kafka: KafkaSettings, db: DatabaseSettings) -> Iterator[TestClient]:
    import_master_data(db, kafka, load_file(EXAMPLES / "locations.csv"))
    t0 = NOW - timedelta(minutes=30)
    sink(
        db,
        [
            event(A, AlertTransition.RAISED, t0),
            event(A, AlertTransition.ESCALATED, t0 + timedelta(minutes=5), level=Status.CRITICAL),
            event(B, AlertTransition.RAISED, t0, sensor="TEMPIOT-A012", loc="A012"),
            event(
                B,
                AlertTransition.RESOLVED,
                t0 + timedelta(minutes=20),
                sensor="TEMPIOT-A012",
                loc="A012",
            ),
            event(
                C,
                AlertTransition.RAISED,
                OLD,
                sensor="TEMPIOT-B011",
                loc="B011",
                metric="humidity",
                value="91.00",
            ),
            event(
                C,
                AlertTransition.RESOLVED,
                OLD + timedelta(hours=1),
                sensor="TEMPIOT-B011",
                loc="B011",
                metric="humidity",
                value="91.00",
            ),
            event(D, AlertTransition.RAISED, NOW - timedelta(minutes=1), metric=None, value="0"),
        ],
    )
    with TestClient(create_app(api_settings(stack, kafka, db))) as c:
        yield c


def ids(response: object) -> list[str]:
    assert hasattr(response, "json")
    return [a["alert_id"] for a in response.json()]


def test_list_newest_first_with_the_original_fields(client: TestClient) -> None:
    r = client.get("/api/v1/alerts/")
    assert r.status_code == 200, r.text
    # A and B were raised at the same instant: the id breaks the tie.
    assert ids(r) == [str(D), *sorted([str(A), str(B)]), str(C)]
    a = next(x for x in r.json() if x["alert_id"] == str(A))
    original = {
        "alert_id",
        "alert_time",
        "loc_id",
        "sensor_id",
        "alert_type",
        "alert_level",
        "threshold_id",
        "threshold_type",
        "threshold_level",
        "measured_value",
        "threshold_min",
        "threshold_max",
        "message",
    }
    assert original <= set(a)
    assert a["alert_level"] == "critical" and a["state"] == "active"
    assert a["threshold_level"] == "orange" and a["factory"] == "SinPyeong"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"sensor_id": "TEMPIOT-A011"}, {"D", "A"}),
        ({"loc_id": "A012"}, {"B"}),
        ({"factory": "JangNim"}, {"C"}),
        ({"alert_type": "humidity"}, {"C"}),
        ({"metric": "pcv_temperature"}, {"A", "B"}),
        ({"level": "critical"}, {"A"}),
        ({"alert_level": "warning"}, {"B", "C", "D"}),
        ({"state": "active"}, {"A", "D"}),
        ({"state": "resolved"}, {"B", "C"}),
        ({"kind": "sensor_silent"}, {"D"}),
        ({"from": "2024-09-22T00:00:00+09:00", "to": "2024-09-23T00:00:00+09:00"}, {"C"}),
        ({"factory": "Nowhere"}, set()),
        ({"factory": "SinPyeong", "state": "active", "level": "warning"}, {"D"}),
    ],
)
def test_filters(client: TestClient, params: dict[str, str], expected: set[str]) -> None:
    names = {str(A): "A", str(B): "B", str(C): "C", str(D): "D"}
    r = client.get("/api/v1/alerts/", params=params)
    assert r.status_code == 200, r.text
    assert {names[i] for i in ids(r)} == expected


def test_pagination_and_bad_filters(client: TestClient) -> None:
    first = ids(client.get("/api/v1/alerts/", params={"limit": 2}))
    rest = ids(client.get("/api/v1/alerts/", params={"skip": 2, "limit": 2}))
    assert len(first) == 2 and len(rest) == 2 and not set(first) & set(rest)
    for params, word in (
        ({"level": "red"}, "level"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2024-09-22T00:00:00"}, "time zone"),
        ({"from": "2024-09-23T00:00:00Z", "to": "2024-09-22T00:00:00Z"}, "before"),
        ({"metric": "humidity", "alert_type": "temperature"}, "disagree"),
        ({"sensor_id": "x' OR '1'='1"}, "sensor_id"),
        ({"limit": 0}, "limit"),
    ):
        r = client.get("/api/v1/alerts/", params=params)
        assert r.status_code == 422, (params, r.text)
        assert word in r.json()["error"]["message"], (params, r.text)


def test_today_is_the_factory_local_day(client: TestClient) -> None:
    today = set(ids(client.get("/api/v1/alerts/today")))
    assert str(C) not in today and str(D) in today
    # A and B were raised 30 minutes ago: today unless the local day turned since then.
    seoul_day = (NOW + timedelta(hours=9)).date()
    raised = NOW - timedelta(minutes=30)
    if (raised + timedelta(hours=9)).date() == seoul_day:
        assert {str(A), str(B)} <= today
    only = ids(client.get("/api/v1/alerts/today", params={"sensor_id": "TEMPIOT-A011"}))
    assert str(D) in only and str(B) not in only


def test_one_alert_with_its_events(client: TestClient) -> None:
    r = client.get(f"/api/v1/alerts/{A}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert [e["transition"] for e in body["events"]] == ["raised", "escalated"]
    assert [e["level"] for e in body["events"]] == ["warning", "critical"]
    assert client.get(f"/api/v1/alerts/{uuid4()}").status_code == 404
    bad = client.get("/api/v1/alerts/not-a-uuid")
    assert bad.status_code == 422 and bad.json()["error"]["status"] == 422


def test_acknowledge(client: TestClient, db: DatabaseSettings) -> None:
    before = client.get(f"/api/v1/alerts/{A}").json()
    url = f"/api/v1/alerts/{A}/ack"
    assert client.post(url, json={"note": "on it"}).status_code == 401
    assert client.post(url, json={"note": "on it"}, headers=VIEWER).status_code == 403
    # Who acted comes from the token: an operator cannot record someone else.
    named = client.post(url, json={"who": "kim", "note": "on it"}, headers=OPERATOR)
    assert named.status_code == 403 and "admin" in named.json()["error"]["message"]
    assert client.get(f"/api/v1/alerts/{A}", headers=VIEWER).json()["acknowledged_at"] is None
    # An admin may act on behalf of someone, recorded as such.
    r = client.post(url, json={"who": "kim", "note": "on it"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    acked = r.json()
    assert acked["acknowledged_by"] == "kim (by token:admin)" and acked["ack_note"] == "on it"
    assert acked["acknowledged_at"] is not None
    assert acked["updated_at"] == before["updated_at"]  # the sink orders by it
    again = client.post(url, json={}, headers=OPERATOR)
    assert again.status_code == 409 and "kim" in again.json()["error"]["message"]
    # An operator's acknowledgement records the operator.
    r = client.post(f"/api/v1/alerts/{D}/ack", json={"note": "mine"}, headers=OPERATOR)
    assert r.json()["acknowledged_by"] == "token:operator"
    # Without a token (open reads) the names and notes are not shown.
    anonymous = client.get(f"/api/v1/alerts/{D}").json()
    assert anonymous["acknowledged_at"] is not None
    assert (anonymous["acknowledged_by"], anonymous["ack_note"]) == (None, None)
    listed = {a["alert_id"]: a for a in client.get("/api/v1/alerts/").json()}
    assert listed[str(A)]["acknowledged_by"] is None and listed[str(A)]["ack_note"] is None
    shown = {a["alert_id"]: a for a in client.get("/api/v1/alerts/", headers=VIEWER).json()}
    assert shown[str(A)]["acknowledged_by"] == "kim (by token:admin)"
    assert ids(client.get("/api/v1/alerts/", params={"acknowledged": "false"})) == [
        i for i in ids(client.get("/api/v1/alerts/")) if i not in (str(A), str(D))
    ]
    # A later event from the workers keeps the acknowledgement.
    sink(db, [event(A, AlertTransition.DEESCALATED, NOW, value="31.20")])
    after = client.get(f"/api/v1/alerts/{A}", headers=VIEWER).json()
    assert after["alert_level"] == "warning" and after["acknowledged_by"] == "kim (by token:admin)"
    assert client.post(f"/api/v1/alerts/{uuid4()}/ack", json={}, headers=OPERATOR).status_code == (
        404
    )
    extra = client.post(url, json={"who": "kim", "by": "x"}, headers=ADMIN)
    assert extra.status_code == 422


def test_manual_resolution_survives_later_events(client: TestClient, db: DatabaseSettings) -> None:
    url = f"/api/v1/alerts/{A}/resolve"
    assert client.post(url, json={}).status_code == 401
    r = client.post(url, json={"note": "fan replaced"}, headers=OPERATOR)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "resolved" and body["resolved_by"] == "token:operator"
    assert body["resolve_note"] == "fan replaced"
    assert client.post(url, json={}, headers=OPERATOR).status_code == 409
    assert client.post(f"/api/v1/alerts/{B}/resolve", json={}, headers=OPERATOR).status_code == 409
    # The worker still saw the condition and later escalates, then resolves it itself:
    sink(
        db,
        [
            event(A, AlertTransition.ESCALATED, NOW, level=Status.CRITICAL, value="34.00"),
            event(A, AlertTransition.RESOLVED, NOW + timedelta(minutes=5)),
        ],
    )
    after = client.get(f"/api/v1/alerts/{A}", headers=VIEWER).json()
    assert after["state"] == "resolved" and after["resolved_by"] == "token:operator"
    # Without a token, who resolved it and why are not shown, on any list.
    for url in (f"/api/v1/alerts/{A}", "/api/v1/alerts/", "/api/v1/alerts/today"):
        found = client.get(url).json()
        for alert in found if isinstance(found, list) else [found]:
            assert alert["resolved_by"] is None and alert["resolve_note"] is None, url
            assert alert["acknowledged_by"] is None and alert["ack_note"] is None, url
    assert any(a["alert_id"] == str(A) for a in client.get("/api/v1/alerts/").json())
    assert after["resolved_at"] == body["resolved_at"]
    assert [e["transition"] for e in after["events"]][-1] == "resolved"


def test_stats(client: TestClient) -> None:
    client.post(f"/api/v1/alerts/{A}/ack", json={}, headers=OPERATOR)
    r = client.get("/api/v1/alerts/stats")
    assert r.status_code == 200, r.text
    s = r.json()
    assert (s["total"], s["active"], s["acknowledged"]) == (4, 2, 1)
    assert {c["key"]: c["count"] for c in s["by_level"]} == {"critical": 1, "warning": 3}
    assert s["by_location"][0] == {"key": "A011", "count": 2}
    days = [c["key"] for c in s["by_day"]]
    assert days[0] == "2024-09-22" and days == sorted(days)
    # MTTR over B (20 minutes) and C (one hour); MTTA over A (acknowledged just now).
    assert s["mean_time_to_resolve_s"] == pytest.approx((20 * 60 + 3600) / 2)
    # A was raised 30 minutes before NOW (taken when this module was collected, which may
    # be long before this test runs in a big session) and acknowledged just now.
    since_now = (datetime.now(UTC) - NOW).total_seconds()
    assert 30 * 60 - 5 <= s["mean_time_to_acknowledge_s"] <= 30 * 60 + since_now + 5
    jang = client.get("/api/v1/alerts/stats", params={"factory": "JangNim"}).json()
    assert jang["total"] == 1 and jang["mean_time_to_acknowledge_s"] is None
    none = client.get("/api/v1/alerts/stats", params={"factory": "Nowhere"}).json()
    assert none["total"] == 0 and none["by_level"] == [] and none["mean_time_to_resolve_s"] is None
