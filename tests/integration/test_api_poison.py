"""The API's topic readers survive any single record: real Kafka, PostgreSQL and uvicorn.

A record of the latest topic that breaks the realtime answer's arithmetic, and records of
the alerts topic that are not alert events, are skipped, counted and dead-lettered once
(stage ``api``); the answers and the live streams go on with the good records after them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest

from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.kafka import make_producer, publish_keyed
from producers.masterdata import import_master_data, load_file
from schemas.deadletters import DeadLetterHeaders as H
from schemas.readings import SensorStatus
from schemas.topics import topic_name
from tests.api_support import api_settings, live_server
from tests.helpers import headers_of, read_topic, wait_for
from tests.integration.test_api_realtime_topic import (
    EXAMPLES,
    NOW,
    _temperature,
    app_settings,
    serving,
    status,
)
from tests.integration.test_api_realtime_topic import rows as realtime_rows
from tests.integration.test_api_stream import Sse, alert

pytestmark = pytest.mark.integration

rows = realtime_rows  # the fixture: three sensors' rows in latest_readings


def _dead(kafka: KafkaSettings, n: int, timeout: float = 20) -> list[Any]:
    return read_topic(
        kafka,
        topic_name("dead_letters", kafka.topic_prefix),
        until=lambda m: len(m) >= n,
        timeout=timeout,
    )


def test_a_poison_status_never_breaks_the_realtime_answer(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, rows: list[SensorStatus]
) -> None:
    # A valid status whose value the answer cannot round to the table's numeric(6, 2).
    poison = status("TEMPIOT-A011", "A011", NOW, "1E+40")
    with serving(app_settings(stack, kafka, db)) as client:
        publish_keyed(kafka, "latest", [("TEMPIOT-A011", poison)])
        wait_for(lambda: len(client.app.state.statuses) == 1, 10, "the poison status")  # type: ignore[attr-defined]
        response = client.get("/api/v1/realtime/")
        assert response.status_code == 200
        assert _temperature(client, "TEMPIOT-A011") == "22.1"  # the row's, not the poison's
        # The next status of the same sensor shows as usual.
        later = status("TEMPIOT-A011", "A011", NOW + timedelta(seconds=1), "26.5")
        publish_keyed(kafka, "latest", [("TEMPIOT-A011", later)])
        wait_for(lambda: _temperature(client, "TEMPIOT-A011") == "26.5", 10, "the next status")
        registry = client.app.state.registry  # type: ignore[attr-defined]
        assert (
            registry.get_sample_value("iotmon_api_poison_records_total", {"reader": "latest"}) == 1
        )
    (dead,) = _dead(kafka, 1)
    headers = headers_of(dead)
    assert headers[H.STAGE] == b"api"
    assert headers[H.REASON] == b"internal_error"
    assert headers[H.ERROR] == b"InvalidOperation"
    assert headers[H.ORIGIN_TOPIC] == topic_name("latest", kafka.topic_prefix).encode()
    assert dead.value() == poison.model_dump_json().encode()


@pytest.fixture
def base_url(stack: Settings, kafka: KafkaSettings, db: DatabaseSettings) -> Iterator[str]:
    import_master_data(db, kafka, load_file(EXAMPLES / "locations.csv"))
    with live_server(api_settings(stack, kafka, db, stream_ping_s=1.0)) as url:
        yield url


def test_a_stream_skips_a_record_it_cannot_render_and_goes_on(
    base_url: str, kafka: KafkaSettings
) -> None:
    good = alert("TEMPIOT-A011", "31.5", 1)
    alerts_topic = topic_name("alerts", kafka.topic_prefix)
    timeout = httpx.Timeout(30.0)
    with (
        httpx.Client(base_url=base_url, timeout=timeout) as client,
        client.stream("GET", "/api/v1/stream/alerts") as first,
        client.stream("GET", "/api/v1/stream/alerts") as second,
    ):
        streams = [Sse(first), Sse(second)]
        assert all(s.next()["event"] == "ready" for s in streams)
        producer = make_producer(kafka)
        for value in (b"\xff not an alert", b'{"alert_id": 1}'):
            producer.produce(alerts_topic, value, key=b"TEMPIOT-A011", partition=0)
        producer.produce(
            alerts_topic, good.model_dump_json().encode(), key=b"TEMPIOT-A011", partition=0
        )
        assert producer.flush(10) == 0
        for stream in streams:  # both streams go on to the good event
            event = stream.next()
            assert event["event"] == "alert"
            assert orjson.loads(event["data"])["event_id"] == str(good.event_id)
        metrics = client.get("/metrics").text
    # Each bad record dead-lettered once, though two streams met it.
    dead = _dead(kafka, 2)
    assert len(_dead(kafka, 3, timeout=3)) == 2
    assert sorted(int(headers_of(m)[H.ORIGIN_OFFSET]) for m in dead) == [0, 1]
    assert all(headers_of(m)[H.STAGE] == b"api" for m in dead)
    assert all(headers_of(m)[H.ERROR] == b"ValidationError" for m in dead)
    assert 'iotmon_api_poison_records_total{reader="stream.alerts"} 4.0' in metrics
