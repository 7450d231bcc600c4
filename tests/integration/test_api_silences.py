"""`/api/v1/silences` through HTTP on the real PostgreSQL: operators create and end
silences, everyone with a token lists them, bad ranges are 422 with a message, and the
notifications a silence kept back are listed under it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import create_app
from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from tests.api_support import OPERATOR, VIEWER, api_settings

pytestmark = pytest.mark.integration

URL = "/api/v1/silences/"
NO_TOKEN = {"Authorization": ""}


@pytest.fixture
def client(stack: Settings, kafka: KafkaSettings, db: DatabaseSettings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings(stack, kafka, db)), headers=VIEWER) as c:
        yield c


def iso(t: datetime) -> str:
    return t.isoformat()


def test_create_list_and_end_a_silence(client: TestClient, db: DatabaseSettings) -> None:
    body = {
        "factory": "SinPyeong",
        "building": "MX-1",
        "threshold_type": "pcv_temperature",
        "duration_s": 3600,
        "reason": "air conditioning maintenance",
    }
    assert client.post(URL, json=body, headers=NO_TOKEN).status_code == 401
    assert client.post(URL, json=body, headers=VIEWER).status_code == 403
    r = client.post(URL, json=body, headers=OPERATOR)
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["active"] is True and doc["created_by"] == "token:operator"
    start, end = datetime.fromisoformat(doc["starts_at"]), datetime.fromisoformat(doc["ends_at"])
    assert end - start == timedelta(hours=1)
    sid = doc["silence_id"]
    later = client.post(
        URL,
        json={
            "factory": "JangNim",
            "starts_at": iso(datetime.now(UTC) + timedelta(days=1)),
            "ends_at": iso(datetime.now(UTC) + timedelta(days=1, hours=2)),
            "reason": "planned shutdown",
        },
        headers=OPERATOR,
    ).json()
    assert later["active"] is False
    assert client.get(URL, headers=NO_TOKEN).status_code == 401  # who muted what: private
    assert {s["silence_id"] for s in client.get(URL).json()} == {sid, later["silence_id"]}
    assert [s["silence_id"] for s in client.get(URL, params={"state": "active"}).json()] == [sid]
    assert [s["silence_id"] for s in client.get(URL, params={"state": "pending"}).json()] == [
        later["silence_id"]
    ]
    assert client.get(URL, params={"factory": "JangNim"}).json()[0]["reason"] == (
        "planned shutdown"
    )

    ended = client.delete(f"{URL}{sid}", headers=OPERATOR)
    assert ended.status_code == 200, ended.text
    assert ended.json()["active"] is False and ended.json()["ended_by"] == "token:operator"
    assert client.delete(f"{URL}{sid}", headers=OPERATOR).status_code == 409
    # A pending one ended never starts; both rows stay on record.
    assert client.delete(f"{URL}{later['silence_id']}", headers=OPERATOR).status_code == 200
    assert client.get(URL).json() == []
    assert len(client.get(URL, params={"state": "ended"}).json()) == 2
    assert client.get(f"{URL}{sid}").json()["reason"] == "air conditioning maintenance"
    assert client.get(f"{URL}999999").status_code == 404

    # What a silence held back is listed under it.
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        (sub,) = conn.execute(
            "INSERT INTO alert_subscriptions (subscriber, notify_type, notify_id)"
            " VALUES ('kim', 'email', 'kim@example.com') RETURNING subscription_id"
        ).fetchone() or (0,)
        conn.execute(
            "INSERT INTO notifications (alert_id, event_id, subscription_id, notify_type,"
            " notify_id, status, silence_id, fail_reason)"
            " VALUES (%s, %s, %s, 'email', 'kim@example.com', 'SUPPRESSED', %s, 'silenced')",
            (uuid4(), uuid4(), sub, sid),
        )
    [held] = client.get(f"{URL}{sid}/suppressed").json()
    assert held["status"] == "SUPPRESSED" and held["silence_id"] == sid
    by_status = client.get("/api/v1/notifications/", params={"status": "SUPPRESSED"}).json()
    assert [n["notification_id"] for n in by_status] == [held["notification_id"]]


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({}, "either ends_at or duration_s"),
        ({"duration_s": 600, "ends_at": "2099-01-01T00:00:00+09:00"}, "either"),
        (
            {"ends_at": "2020-01-01T00:00:00+00:00", "starts_at": "2019-12-31T00:00:00+00:00"},
            "past",
        ),
        (
            {"starts_at": "2099-01-02T00:00:00+00:00", "ends_at": "2099-01-01T00:00:00+00:00"},
            "after starts_at",
        ),
        (
            {"starts_at": "2099-01-01T00:00:00+00:00", "ends_at": "2099-03-01T00:00:00+00:00"},
            "31 days",
        ),
        ({"ends_at": "2099-01-01T00:00:00"}, "time zone"),
        ({"duration_s": 10}, "greater than or equal"),
        ({"starts_at": "9999-12-31T23:00:00+00:00", "duration_s": 7200}, "9999"),
        ({"duration_s": 600, "threshold_type": "wind"}, ""),
        ({"duration_s": 600, "sensor_id": "x" * 300}, ""),
        ({"duration_s": 600, "reason": ""}, ""),
        ({"duration_s": 600, "severity": "all"}, "extra"),
    ],
)
def test_bad_silences_are_refused_with_a_message(
    client: TestClient, bad: dict[str, object], words: str
) -> None:
    body = {"reason": "maintenance", **bad}
    r = client.post(URL, json=body, headers=OPERATOR)
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert words.lower() in message.lower(), message


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    doc=st.dictionaries(
        st.sampled_from(
            [
                "factory",
                "floor",
                "sensor_id",
                "threshold_type",
                "starts_at",
                "ends_at",
                "duration_s",
                "reason",
                "plant",
            ]
        ),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            # Every float JSON can carry (NaN and infinities have no JSON form).
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(max_size=40),
            st.lists(st.integers(), max_size=2),
        ),
    )
)
def test_no_body_makes_the_silences_endpoint_fail(
    client: TestClient, doc: dict[str, object]
) -> None:
    """Whatever a client sends, the answer is 201 or a 4xx with a message, never a 500."""
    r = client.post(URL, json=doc, headers=OPERATOR)
    assert r.status_code in (201, 422), r.text
    if r.status_code == 422:
        assert r.json()["error"]["message"]
