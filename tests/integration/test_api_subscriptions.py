"""`/api/v1/subscriptions` and `/api/v1/notifications` through HTTP on the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import uuid4

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from tests.api_support import OPERATOR, VIEWER, api_settings

pytestmark = pytest.mark.integration

URL = "/api/v1/subscriptions/"
NO_TOKEN = {"Authorization": ""}  # over the client's default viewer token
BODY = {
    "factory": "SinPyeong",
    "building": "MX-1",
    "subscriber": "kim",
    "notify_type": "email",
    "notify_id": "kim@example.com",
}


@pytest.fixture
def client(stack: Settings, kafka: KafkaSettings, db: DatabaseSettings) -> Iterator[TestClient]:
    # Subscriptions and the notification log are personal data: read with a viewer token.
    with TestClient(create_app(api_settings(stack, kafka, db)), headers=VIEWER) as c:
        yield c


def test_create_read_update_delete(client: TestClient) -> None:
    assert client.post(URL, json=BODY, headers=NO_TOKEN).status_code == 401
    assert client.post(URL, json=BODY, headers=VIEWER).status_code == 403
    r = client.post(URL, json=BODY, headers=OPERATOR)
    assert r.status_code == 201, r.text
    sub = r.json()
    sid = sub["subscription_id"]
    # NULL scope and threshold type mean "any"; min_level defaults to warning.
    assert sub["threshold_type"] is None and sub["floor"] is None
    assert sub["min_level"] == "warning" and sub["enabled"] is True
    assert client.get(f"{URL}{sid}").json() == sub
    assert [s["subscription_id"] for s in client.get(URL).json()] == [sid]

    r = client.put(f"{URL}{sid}", json={"min_level": "critical", "floor": 2}, headers=OPERATOR)
    assert r.status_code == 200, r.text
    assert (r.json()["min_level"], r.json()["floor"], r.json()["factory"]) == (
        "critical",
        2,
        "SinPyeong",
    )
    # The merged row is validated: an email channel with a non-address target is refused.
    bad = client.put(f"{URL}{sid}", json={"notify_id": "not-an-address"}, headers=OPERATOR)
    assert bad.status_code == 422 and "address" in bad.json()["error"]["message"]
    assert client.get(f"{URL}{sid}").json()["notify_id"] == "kim@example.com"
    moved = client.put(
        f"{URL}{sid}",
        json={"notify_type": "webhook", "notify_id": "https://hooks.example.com/x"},
        headers=OPERATOR,
    )
    assert moved.status_code == 200 and moved.json()["notify_type"] == "webhook"

    assert client.post(f"{URL}{sid}/disable", headers=OPERATOR).json()["enabled"] is False
    assert client.get(URL, params={"enabled": True}).json() == []
    assert client.post(f"{URL}{sid}/enable", headers=OPERATOR).json()["enabled"] is True
    assert client.post(f"{URL}{sid}/disable", headers=NO_TOKEN).status_code == 401

    assert client.delete(f"{URL}{sid}", headers=NO_TOKEN).status_code == 401
    assert client.delete(f"{URL}{sid}", headers=OPERATOR).json()["subscription_id"] == sid
    assert client.get(f"{URL}{sid}").status_code == 404
    assert client.put(f"{URL}{sid}", json={}, headers=OPERATOR).status_code == 404
    assert client.post(f"{URL}{sid}/enable", headers=OPERATOR).status_code == 404


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"notify_type": "pager"}, "notify_type"),
        ({"min_level": "normal"}, "min_level"),
        ({"threshold_type": "pressure"}, "threshold_type"),
        ({"notify_type": "webhook", "notify_id": "ftp://x"}, "URL"),
        ({"subscriber": ""}, "subscriber"),
        ({"sensor_id": "bad id!"}, "sensor_id"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_subscriptions_are_422(
    client: TestClient, change: dict[str, str], word: str
) -> None:
    r = client.post(URL, json={**BODY, **change}, headers=OPERATOR)
    assert r.status_code == 422, r.text
    assert word in r.text
    assert client.get(URL).json() == []


def test_filters(client: TestClient) -> None:
    client.post(URL, json=BODY, headers=OPERATOR)
    client.post(
        URL,
        json={**BODY, "factory": "JangNim", "notify_type": "sms", "notify_id": "010-1234"},
        headers=OPERATOR,
    )
    assert [s["factory"] for s in client.get(URL, params={"notify_type": "sms"}).json()] == [
        "JangNim"
    ]
    assert len(client.get(URL, params={"subscriber": "kim"}).json()) == 2
    assert client.get(URL, params={"factory": "Nowhere"}).json() == []
    assert len(client.get(URL, params={"limit": 1, "skip": 1}).json()) == 1


def test_notification_log(client: TestClient, db: DatabaseSettings) -> None:
    sid = client.post(URL, json=BODY, headers=OPERATOR).json()["subscription_id"]
    alert, other = uuid4(), uuid4()
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        for a, status, reason in (
            (alert, "SENT", None),
            (alert, "FAILED", "smtp: 550 mailbox unavailable"),
            (other, "PENDING", None),
        ):
            conn.execute(
                "INSERT INTO notifications (alert_id, event_id, subscription_id, notify_type,"
                " notify_id, status, try_count, fail_reason) VALUES (%s, %s, %s, 'email',"
                " 'kim@example.com', %s, 1, %s)",
                (a, uuid4(), sid, status, reason),
            )
    log = client.get("/api/v1/notifications/")
    assert log.status_code == 200 and len(log.json()) == 3
    assert [n["notification_id"] for n in log.json()] == sorted(
        (n["notification_id"] for n in log.json()), reverse=True
    )
    by_alert = client.get("/api/v1/notifications/", params={"alert_id": str(alert)}).json()
    assert {n["status"] for n in by_alert} == {"SENT", "FAILED"}
    failed = client.get("/api/v1/notifications/", params={"status": "FAILED"}).json()
    assert [n["fail_reason"] for n in failed] == ["smtp: 550 mailbox unavailable"]
    assert len(client.get("/api/v1/notifications/", params={"subscription_id": sid}).json()) == 3
    assert client.get("/api/v1/notifications/", params={"status": "LOST"}).status_code == 422
    # The original system's read endpoints.
    one = log.json()[0]
    assert client.get(f"/api/v1/notifications/{one['notification_id']}").json() == one
    assert one["idempotency_key"] == f"{one['event_id']}:{sid}"
    assert [n["status"] for n in client.get("/api/v1/notifications/pending").json()] == ["PENDING"]
    assert [n["status"] for n in client.get("/api/v1/notifications/failed").json()] == ["FAILED"]
    assert len(client.get(f"/api/v1/notifications/alert/{alert}").json()) == 2
    assert len(client.get(f"/api/v1/notifications/subscription/{sid}").json()) == 3
    assert client.get("/api/v1/notifications/999999").status_code == 404
    # Deleting a subscription deletes its log.
    client.delete(f"{URL}{sid}", headers=OPERATOR)
    assert client.get("/api/v1/notifications/").json() == []


def test_personal_data_is_never_readable_without_a_token(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings
) -> None:
    settings = api_settings(stack, kafka, db)
    assert settings.api.open_reads  # other reads are open
    with TestClient(create_app(settings)) as anonymous:
        created = anonymous.post(URL, json=BODY, headers=OPERATOR)
        assert created.status_code == 201, created.text
        sid = created.json()["subscription_id"]
        for path in (URL, f"{URL}{sid}", "/api/v1/notifications/"):
            r = anonymous.get(path)
            assert r.status_code == 401, (path, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert BODY["notify_id"] not in r.text
            assert anonymous.get(path, headers=VIEWER).status_code == 200
        assert anonymous.get("/api/v1/thresholds/").status_code == 200


def test_delivery_options_and_a_write_only_secret(client: TestClient) -> None:
    body = {
        **BODY,
        "notify_type": "webhook",
        "notify_id": "https://hooks.example/alerts",
        "transitions": ["raised", "resolved"],
        "include_silent": True,
        "secret": "a-webhook-secret-of-some-length",
    }
    created = client.post(URL, json=body, headers=OPERATOR)
    assert created.status_code == 201, created.text
    doc = created.json()
    assert "secret" not in doc and doc["has_secret"] is True
    assert doc["transitions"] == ["raised", "resolved"] and doc["include_silent"] is True
    sid = doc["subscription_id"]
    assert "a-webhook-secret" not in client.get(f"{URL}{sid}").text
    # An update without a secret keeps it.
    changed = client.put(f"{URL}{sid}", json={"include_silent": False}, headers=OPERATOR)
    assert changed.json()["has_secret"] is True and changed.json()["include_silent"] is False
    bad_fields: list[dict[str, object]] = [
        {"transitions": []},
        {"transitions": ["raised", "raised"]},
        {"transitions": ["exploded"]},
        {"secret": "short"},
        {"notify_type": "slack", "notify_id": "http://plain.example/hook"},
    ]
    for bad in bad_fields:
        r = client.post(URL, json={**body, **bad}, headers=OPERATOR)
        assert r.status_code == 422, (bad, r.text)
    slack = {**body, "notify_type": "slack", "notify_id": "https://hooks.slack.com/services/T/B/X"}
    assert client.post(URL, json=slack, headers=OPERATOR).status_code == 201


def test_escalation_rate_limit_and_mqtt_targets(client: TestClient) -> None:
    body = {
        **BODY,
        "notify_type": "mqtt",
        "notify_id": "alerts/{factory}/{loc_id}",
        "escalate_after_s": 900,
        "escalate_type": "email",
        "escalate_to": "safety-lead@example.com",
        "max_per_minute": 5,
    }
    created = client.post(URL, json=body, headers=OPERATOR)
    assert created.status_code == 201, created.text
    doc = created.json()
    assert (doc["escalate_after_s"], doc["escalate_to"], doc["max_per_minute"]) == (
        900,
        "safety-lead@example.com",
        5,
    )
    sid = doc["subscription_id"]
    # Turning escalation off takes all three fields.
    off = {"escalate_after_s": None, "escalate_type": None, "escalate_to": None}
    r = client.put(f"{URL}{sid}", json=off, headers=OPERATOR)
    assert r.status_code == 200 and r.json()["escalate_after_s"] is None, r.text
    r = client.put(f"{URL}{sid}", json={"escalate_after_s": 600}, headers=OPERATOR)
    assert r.status_code == 422 and "together" in r.json()["error"]["message"]
    bad_fields: list[dict[str, object]] = [
        {"escalate_after_s": 900},  # without a target
        {"escalate_type": "email", "escalate_to": "nobody"},  # not an address
        {"escalate_type": "email", "escalate_to": "a@b.example\r\nBcc: x@y.example"},
        {"escalate_type": "email", "escalate_to": "a@b.example, c@d.example"},
        {"escalate_type": "sms", "escalate_to": "010"},  # no such escalation channel
        {"escalate_after_s": 10},  # under a minute
        {"max_per_minute": -1},
        {"notify_id": "alerts/+/{loc_id}"},  # a wildcard
        {"notify_id": "alerts/{building}/{nope}"},  # an unknown field
        {"notify_id": "plant/{loc_id}"},  # outside the notifier's tree
    ]
    for bad in bad_fields:
        r = client.post(
            URL,
            json={**BODY, "notify_type": "mqtt", "notify_id": "alerts/x", **bad},
            headers=OPERATOR,
        )
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["message"], bad


def test_viewers_see_where_a_webhook_goes_but_not_the_url_that_lets_one_post(
    client: TestClient, db: DatabaseSettings
) -> None:
    """A Slack incoming-webhook URL is the credential itself: viewers get scheme and host,
    operators the whole URL, in subscriptions and in the notification log alike."""
    url = "https://hooks.slack.com/services/T000/B000/SECRETPART"
    body = {
        **BODY,
        "notify_type": "slack",
        "notify_id": url,
        "escalate_after_s": 900,
        "escalate_type": "webhook",
        "escalate_to": "https://user:pw@ops.example/hook?token=abc",
    }
    sid = client.post(URL, json=body, headers=OPERATOR).json()["subscription_id"]
    seen = client.get(f"{URL}{sid}").json()
    assert seen["notify_id"] == "https://hooks.slack.com/…"
    assert seen["escalate_to"] == "https://ops.example/…"
    assert "SECRETPART" not in client.get(URL).text and "token=abc" not in client.get(URL).text
    assert client.get(f"{URL}{sid}", headers=OPERATOR).json()["notify_id"] == url
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        conn.execute(
            "INSERT INTO notifications (alert_id, event_id, subscription_id, notify_type,"
            " notify_id) VALUES (%s, %s, %s, 'slack', %s)",
            (uuid4(), uuid4(), sid, url),
        )
    for path in ("/api/v1/notifications/", "/api/v1/notifications/pending"):
        assert [n["notify_id"] for n in client.get(path).json()] == ["https://hooks.slack.com/…"]
        assert client.get(path, headers=OPERATOR).json()[0]["notify_id"] == url


def test_a_stored_row_the_input_rules_would_refuse_is_still_listed(
    client: TestClient, db: DatabaseSettings
) -> None:
    """The demo stores a Slack subscription to its local plain-http endpoint; rules for
    writes must not turn reading such a row into a 500."""
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        conn.execute(
            "INSERT INTO alert_subscriptions (subscriber, notify_type, notify_id)"
            " VALUES ('demo', 'slack', 'http://127.0.0.1:9/slack')"
        )
    listed = client.get(URL, headers=OPERATOR)
    assert listed.status_code == 200, listed.text
    [row] = listed.json()
    assert row["notify_id"] == "http://127.0.0.1:9/slack"
    assert client.get(f"{URL}{row['subscription_id']}").status_code == 200
    # Changing it is a write: the rule applies, with a message.
    r = client.put(f"{URL}{row['subscription_id']}", json={"enabled": True}, headers=OPERATOR)
    assert r.status_code == 422 and "https://" in r.json()["error"]["message"]
