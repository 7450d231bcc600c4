"""A reading published over MQTT reaches its tile on an open board within seconds, without
a reload: gateway -> Mosquitto -> bridge -> ingest -> worker -> latest topic -> the API's
live stream -> the page."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from paho.mqtt import client as mqtt_client
from playwright.sync_api import Page, expect
from prometheus_client import CollectorRegistry

from iotmon.settings import DatabaseSettings, KafkaSettings, MqttSettings, Settings
from producers.mqtt_connect import apply_login
from stream_apps.ingest.main import build as build_ingest
from tests.browser.conftest import Dashboard, screenshot
from tests.helpers import gateway_settings, start_bridge
from tests.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest.fixture
def pipeline(
    stack: Settings,
    kafka: KafkaSettings,
    mqtt: MqttSettings,
    db: DatabaseSettings,
    dashboard: Dashboard,
    group_id: str,
    test_id: str,
    tmp_path: Path,
) -> Iterator[Pipeline]:
    """The bridge and ingest (threads) and a worker (process) with the sinks, on the
    dashboard's topics and schema; ready once a probe went through the worker."""
    _bridge, stop_bridge, bridge_thread = start_bridge(kafka, mqtt)
    settings = stack.model_copy(
        update={
            "kafka": kafka,
            "db": db,
            "mqtt": mqtt,
            "ingest": stack.ingest.model_copy(update={"group_id": f"{group_id}-ingest"}),
        }
    )
    ingest = build_ingest(settings, CollectorRegistry())
    stop_ingest = threading.Event()
    ingest_thread = threading.Thread(target=ingest.run, args=(stop_ingest,), daemon=True)
    ingest_thread.start()
    pipe = Pipeline(stack, kafka, db, test_id, tmp_path)
    try:
        pipe.worker()
        pipe.wait_ready(timeout=120)
        yield pipe
    finally:
        pipe.close()
        stop_ingest.set()
        stop_bridge.set()
        ingest_thread.join(40)
        bridge_thread.join(40)
        ingest.consumer.close()
        ingest.directory.close()


def publish(mqtt: MqttSettings, sensor: str, reading: dict[str, object]) -> None:
    gateway = gateway_settings(mqtt)
    client = mqtt_client.Client(mqtt_client.CallbackAPIVersion.VERSION2)
    apply_login(client, gateway)
    client.connect(mqtt.host, mqtt.port)
    client.loop_start()
    try:
        info = client.publish(
            f"{mqtt.topic_prefix}sensors/{sensor}/readings", json.dumps(reading), qos=1
        )
        info.wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def test_a_reading_over_mqtt_repaints_its_tile_without_a_reload(
    page: Page, dashboard: Dashboard, pipeline: Pipeline, mqtt: MqttSettings
) -> None:
    page.goto(dashboard.url + "/")
    tile = page.locator('.tile[data-loc="A011"]')
    temperature = tile.locator('dd[data-metric="temperature"]')
    expect(temperature).to_have_text("24.0 °C")
    expect(page.locator("#live")).to_have_text("Live")
    page.evaluate("() => { window.notReloaded = true; }")
    sent = time.monotonic()
    publish(
        mqtt,
        "TEMPIOT-A011",
        {
            "sensor_id": "TEMPIOT-A011",
            "capture_dt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "temperature": 29.7,
            "humidity": 61.0,
        },
    )
    expect(temperature).to_have_text("29.7 °C", timeout=20_000)
    took = time.monotonic() - sent
    print(f"MQTT publish to repainted tile: {took:.2f} s")
    assert took < 15, f"the tile changed only after {took:.1f} s"
    assert page.evaluate("() => window.notReloaded") is True
    # The perceived temperature was computed by ingest (KMA summer formula) and shown too.
    expect(tile.locator('dd[data-metric="pcv_temperature"]')).not_to_have_text("25.1 °C")
    screenshot(page, "board-live")
