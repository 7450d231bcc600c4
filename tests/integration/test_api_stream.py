"""Live streams (SSE) through a real uvicorn server, fed from the real Kafka topics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import orjson
import pytest

from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.kafka import publish_keyed
from producers.masterdata import import_master_data, load_file
from schemas.alerts import AlertEvent, AlertKind, AlertTransition
from schemas.common import Status
from schemas.readings import SensorStatus
from tests.api_support import api_settings, live_server

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "infra" / "examples"
SENSORS = {"TEMPIOT-A011": "A011", "TEMPIOT-A012": "A012", "TEMPIOT-B011": "B011"}


class Sse:
    """Reads events off an open text/event-stream response."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.iter_lines()

    def next(self) -> dict[str, Any]:
        event: dict[str, Any] = {}
        for line in self._lines:
            if not line:
                if "data" in event:
                    return event
                event = {}
                continue
            if line.startswith(":"):
                continue  # keep-alive comment
            field, _, value = line.partition(":")
            event[field] = value[1:] if value.startswith(" ") else value
        raise AssertionError("the stream ended")


def alert(sensor: str, value: str, n: int) -> AlertEvent:
    at = datetime.now(UTC) - timedelta(seconds=100 - n)
    return AlertEvent(
        event_id=uuid4(),
        alert_id=uuid4(),
        kind=AlertKind.THRESHOLD,
        transition=AlertTransition.RAISED,
        sensor_id=sensor,
        loc_id=SENSORS[sensor],
        metric="pcv_temperature",
        level=Status.WARNING,
        measured_value=Decimal(value),
        threshold_id=1,
        threshold_level="yellow",
        threshold_min=Decimal("31.00"),
        threshold_max=Decimal("32.90"),
        reading_time=at,
        decided_at=at,
        message=f"pcv_temperature {value}",
    )


@pytest.fixture
def base_url(stack: Settings, kafka: KafkaSettings, db: DatabaseSettings) -> Iterator[str]:
    import_master_data(db, kafka, load_file(EXAMPLES / "locations.csv"))
    settings = api_settings(stack, kafka, db, stream_ping_s=1.0)
    with live_server(settings) as url:
        yield url


def test_alert_stream_resumes_after_last_event_id(base_url: str, kafka: KafkaSettings) -> None:
    sent = [alert(s, f"31.{n}", n) for n, s in enumerate(list(SENSORS) * 3)]
    seen: list[dict[str, Any]] = []
    timeout = httpx.Timeout(30.0)
    with (
        httpx.Client(base_url=base_url, timeout=timeout) as client,
        client.stream("GET", "/api/v1/stream/alerts") as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        events = Sse(response)
        ready = events.next()
        assert ready["event"] == "ready" and ready["id"]
        publish_keyed(kafka, "alerts", ((e.sensor_id, e) for e in sent[:4]))
        for _ in range(4):
            seen.append(events.next())
    assert all(e["event"] == "alert" for e in seen)
    assert {orjson.loads(e["data"])["event_id"] for e in seen} == {
        str(e.event_id) for e in sent[:4]
    }
    assert orjson.loads(seen[0]["data"])["factory"] in ("SinPyeong", "JangNim")

    # Disconnected; more alerts happen; the client comes back with its last id.
    publish_keyed(kafka, "alerts", ((e.sensor_id, e) for e in sent[4:]))
    with (
        httpx.Client(base_url=base_url, timeout=timeout) as client,
        client.stream(
            "GET", "/api/v1/stream/alerts", headers={"Last-Event-ID": seen[-1]["id"]}
        ) as response,
    ):
        events = Sse(response)
        assert events.next()["event"] == "ready"
        resumed = [orjson.loads(events.next()["data"])["event_id"] for _ in sent[4:]]
    assert sorted(resumed) == sorted(
        str(e.event_id) for e in sent[4:]
    )  # nothing missed or repeated

    # The same id as a query parameter (browsers' EventSource cannot set the header on the
    # first connection), with a filter: only JangNim's alerts after the first four.
    with (
        httpx.Client(base_url=base_url, timeout=timeout) as client,
        client.stream(
            "GET",
            "/api/v1/stream/alerts",
            params={
                "last_event_id": seen[-1]["id"],
                "factory": "JangNim",
                "building": "JN-A",
                "metric": "pcv_temperature",
            },
        ) as response,
    ):
        events = Sse(response)
        events.next()
        jang = [e for e in sent[4:] if e.sensor_id == "TEMPIOT-B011"]
        got = [orjson.loads(events.next()["data"]) for _ in jang]
    assert [g["event_id"] for g in got] == [str(e.event_id) for e in jang]


def test_realtime_stream_filters_by_location(base_url: str, kafka: KafkaSettings) -> None:
    now = datetime.now(UTC)

    def status(sensor: str, t: str) -> SensorStatus:
        return SensorStatus(
            sensor_id=sensor,
            loc_id=SENSORS[sensor],
            capture_dt=now,
            temperature=Decimal(t),
            humidity=Decimal("50.00"),
            pcv_temperature=None,
            pcv_computed=False,
            temperature_status=Status.NORMAL,
            humidity_status=None,
            pcv_temperature_status=None,
            updated_at=now,
        )

    with (
        httpx.Client(base_url=base_url, timeout=httpx.Timeout(30.0)) as client,
        client.stream(
            "GET", "/api/v1/stream/realtime", params={"factory": "SinPyeong", "floor": 1}
        ) as response,
    ):
        events = Sse(response)
        assert events.next()["event"] == "ready"
        publish_keyed(
            kafka,
            "latest",
            [(s, status(s, t)) for s, t in (("TEMPIOT-B011", "20.0"), ("TEMPIOT-A011", "22.50"))],
        )
        event = events.next()
    assert event["event"] == "reading"
    data = orjson.loads(event["data"])
    assert data["sensor_id"] == "TEMPIOT-A011"
    assert data["location"]["building"] == "MX-1"
    assert data["metrics"]["temperature"] == {"value": "22.5", "status": "normal"}
    assert data["metrics"]["pcv_temperature"] == {"value": None, "status": None}
    assert data["stale"] is False


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/v1/stream/alerts", {"Last-Event-ID": "yesterday"}),
        ("/api/v1/stream/alerts?level=normal", {}),
        ("/api/v1/stream/realtime?floor=roof", {}),
        ("/api/v1/stream/realtime?last_event_id=0:1;DROP", {}),
    ],
)
def test_bad_stream_requests_are_422(base_url: str, path: str, headers: dict[str, str]) -> None:
    r = httpx.get(base_url + path, headers=headers, timeout=10)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"]


def test_stream_limit(stack: Settings, kafka: KafkaSettings, db: DatabaseSettings) -> None:
    settings = api_settings(stack, kafka, db, stream_max_clients=1)
    with live_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        with client.stream("GET", "/api/v1/stream/alerts") as first:
            events = Sse(first)  # kept: dropping the reader would close the connection
            assert events.next()["event"] == "ready"
            second = httpx.get(url + "/api/v1/stream/realtime", timeout=10)
            assert second.status_code == 503, second.text
            assert "limit" in second.json()["error"]["message"]
        # The first one closed: its place is free again.
        deadline = time.monotonic() + 10
        while True:
            with client.stream("GET", "/api/v1/stream/alerts") as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the closed stream's place was never freed"
            time.sleep(0.2)


def test_one_client_cannot_take_every_stream(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings
) -> None:
    """A client over its share (here 3 of 10) gets 429 while another client still connects;
    an anonymous client is counted by its address, one with a token by its subject."""
    settings = api_settings(stack, kafka, db, stream_max_clients=10, stream_max_per_client=3)
    readers: list[Sse] = []  # kept: dropping a reader would close its connection
    with (
        live_server(settings) as url,
        httpx.Client(base_url=url, timeout=30) as client,
        ExitStack() as held,
    ):
        for _ in range(3):
            response = held.enter_context(client.stream("GET", "/api/v1/stream/alerts"))
            assert response.status_code == 200
            readers.append(Sse(response))
            assert readers[-1].next()["event"] == "ready"
        fourth = httpx.get(url + "/api/v1/stream/alerts", timeout=10)
        assert fourth.status_code == 429, fourth.text
        assert "per client" in fourth.json()["error"]["message"]
        # Another client (a viewer token) still gets a stream.
        with client.stream(
            "GET", "/api/v1/stream/alerts", headers={"Authorization": "Bearer view"}
        ) as other:
            assert other.status_code == 200
            assert Sse(other).next()["event"] == "ready"


def test_a_resume_goes_back_at_most_the_replay_window(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings
) -> None:
    import_master_data(db, kafka, load_file(EXAMPLES / "locations.csv"))
    settings = api_settings(stack, kafka, db, stream_max_replay=2)
    sent = [alert("TEMPIOT-A011", f"31.{n}", n) for n in range(6)]  # one key: one partition
    publish_keyed(kafka, "alerts", ((e.sensor_id, e) for e in sent))
    with live_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        # "From the start of every partition" (or an id made up to replay the whole topic).
        partitions = ",".join(f"{p}:0" for p in range(kafka.default_partitions))
        with client.stream(
            "GET", "/api/v1/stream/alerts", headers={"Last-Event-ID": partitions}
        ) as response:
            events = Sse(response)
            ready = events.next()
            assert orjson.loads(ready["data"])["replay_cut"] is True
            got = [events.next() for _ in range(2)]
        replayed = [orjson.loads(e["data"])["event_id"] for e in got]
        assert replayed == [str(e.event_id) for e in sent[-2:]]
        end = got[-1]["id"]  # every partition at its end
        # An id past the end (no such event) starts at the end, not the oldest record.
        future = ",".join(f"{p}:999999999" for p in range(kafka.default_partitions))
        with client.stream(
            "GET", "/api/v1/stream/alerts", headers={"Last-Event-ID": future}
        ) as response:
            events = Sse(response)
            ahead = events.next()
            assert orjson.loads(ahead["data"])["replay_cut"] is True
            assert ahead["id"] == end
            newer = alert("TEMPIOT-A011", "31.9", 9)
            publish_keyed(kafka, "alerts", [(newer.sensor_id, newer)])
            assert orjson.loads(events.next()["data"])["event_id"] == str(newer.event_id)
        # A resume inside the window (one record behind) is not cut.
        start = end
        with client.stream(
            "GET", "/api/v1/stream/alerts", headers={"Last-Event-ID": start}
        ) as response:
            assert orjson.loads(Sse(response).next()["data"])["replay_cut"] is False
