"""SQL injection attempts in every string parameter of every read endpoint (taken from the
OpenAPI schema, so a new endpoint is covered without editing this test): each answers a
normal 4xx, or 200 with exactly what a harmless unknown value gives, and the data is intact."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.masterdata import import_master_data, load_file
from producers.thresholds import import_thresholds, load_thresholds_file
from tests.api_support import ADMIN, VIEWER, api_settings

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "infra" / "examples"
ATTEMPTS = (
    "' OR '1'='1",
    "A011' OR 1=1 --",
    "1; DROP TABLE sensors; --",
    "x') UNION SELECT sensor_id, loc_id FROM sensors --",
    '" OR ""="',
    "A011\x00' OR '1'='1",
    "%' OR 'x' LIKE '%",
    "$$; DELETE FROM thresholds; $$",
)
HARMLESS = "Nowhere"
# Valid values for the other parameters, so that the one under attack is what decides.
VALID = {
    "metric": "temperature",
    "threshold_type": "temperature",
    "start_date": "2024",
    "end_date": "2024",
    "floor": "1",
    "threshold_id": "1",
    "subscription_id": "1",
    "alert_id": "00000000-0000-0000-0000-000000000000",
}
TABLES = ("locations", "sensors", "thresholds", "alerts", "alert_subscriptions")


def string_parameters(schema: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(path, location, name) of every string path/query parameter of the GET operations."""
    found = []
    for path, item in schema["paths"].items():
        op = item.get("get")
        if op is None or path.startswith("/api/v1/stream/"):
            continue
        for param in op.get("parameters", []):
            types = {param["schema"].get("type")} | {
                s.get("type") for s in param["schema"].get("anyOf", [])
            }
            if "string" in types and param["in"] in ("path", "query"):
                found.append((path, param["in"], param["name"]))
    return found


def request(path: str, where: str, name: str, value: str) -> tuple[str, dict[str, str]]:
    def fill(m: re.Match[str]) -> str:
        key = m.group(1)
        return quote(value, safe="") if key == name else VALID.get(key, HARMLESS)

    url = re.sub(r"\{(\w+)\}", fill, path)
    params = {k: v for k, v in VALID.items() if f"{{{k}}}" not in path and k in ("start_date",)}
    if "aggregation" in path:
        params = {"start_date": "2024", "end_date": "2024"}
    if where == "query":
        params[name] = value
    return url, params


def counts(db: DatabaseSettings) -> dict[str, int]:
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}  # type: ignore[index]


@pytest.fixture
def client(stack: Settings, kafka: KafkaSettings, db: DatabaseSettings) -> Iterator[TestClient]:
    import_master_data(db, kafka, load_file(EXAMPLES / "locations.csv"))
    import_thresholds(db, kafka, load_thresholds_file(EXAMPLES / "thresholds.yaml"))
    with TestClient(create_app(api_settings(stack, kafka, db)), headers=VIEWER) as c:
        c.post(
            "/api/v1/subscriptions/",
            json={"subscriber": "kim", "notify_type": "app", "notify_id": "d1"},
            headers=ADMIN,
        )
        yield c


def test_every_string_parameter_resists_injection(client: TestClient, db: DatabaseSettings) -> None:
    before = counts(db)
    parameters = string_parameters(client.get("/openapi.json").json())
    assert len(parameters) >= 20, parameters  # the schema really lists them
    tried = 0
    for path, where, name in parameters:
        url, params = request(path, where, name, HARMLESS)
        baseline = client.get(url, params=params)
        for attempt in ATTEMPTS:
            url, params = request(path, where, name, attempt)
            r = client.get(url, params=params)
            tried += 1
            assert r.status_code < 500, (path, name, attempt, r.text)
            assert r.headers["content-type"].startswith("application/json"), (path, name)
            if 400 <= r.status_code < 500:
                assert r.json()["error"]["message"], (path, name, attempt)
            elif r.status_code == 200:
                # No more than an unknown value gives: nothing leaked by the attempt.
                assert baseline.status_code in (200, 404), (path, name, baseline.text)
                if baseline.status_code == 200:
                    assert r.json() == baseline.json(), (path, name, attempt, r.text)
    assert tried >= 20 * len(ATTEMPTS)
    assert counts(db) == before


@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_injection_in_bodies_is_stored_as_text_or_refused(
    client: TestClient, db: DatabaseSettings, attempt: str
) -> None:
    before = counts(db)
    r = client.post(
        "/api/v1/subscriptions/",
        json={"subscriber": attempt, "notify_type": "app", "notify_id": attempt},
        headers=ADMIN,
    )
    if "\x00" in attempt:
        assert r.status_code == 422, r.text
        assert counts(db) == before
    else:
        assert r.status_code == 201, r.text
        stored = client.get(f"/api/v1/subscriptions/{r.json()['subscription_id']}").json()
        assert stored["subscriber"] == attempt  # kept verbatim, never executed
        assert counts(db) == {**before, "alert_subscriptions": before["alert_subscriptions"] + 1}
