"""End to end on the real services: simulated gateways -> Mosquitto -> bridge -> Kafka ->
ingest -> sink -> PostgreSQL, with batches, the original row format, duplicates,
out-of-order delivery and malformed payloads. Every valid reading is stored exactly once;
every broken one is in the dead-letter topic."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from iotmon.settings import BridgeSettings, DatabaseSettings, KafkaSettings, MqttSettings, Settings
from producers.bridge import Bridge, BridgeMetrics, make_client
from producers.kafka import make_producer
from producers.masterdata import import_master_data
from producers.simulate_cmd import Delivery, MqttPublisher, run_simulation
from producers.simulator import Scenarios, build_plan, master_data
from schemas.topics import topic_name
from stream_apps.ingest.main import build as build_ingest
from stream_apps.sinks.main import build as build_sink
from stream_apps.sinks.runner import SinkMetrics
from tests.helpers import gateway_settings, read_topic, wait_for

pytestmark = pytest.mark.integration


def test_simulated_plant_through_every_stage(
    stack: Settings,
    kafka: KafkaSettings,
    mqtt: MqttSettings,
    db: DatabaseSettings,
    group_id: str,
) -> None:
    plan = build_plan(
        12,
        start=datetime.now(UTC) - timedelta(hours=1),
        interval_s=1.0,
        speed=10.0,
        seed=7,
        batch=3,
        scenarios=Scenarios(
            disorder=True, malformed=True, original_format=True, malformed_fraction=0.1
        ),
    )
    import_master_data(db, kafka, master_data(plan.sensors))
    settings = stack.model_copy(
        update={
            "kafka": kafka,
            "db": db,
            "mqtt": mqtt,
            "ingest": stack.ingest.model_copy(update={"group_id": f"{group_id}-ingest"}),
            "sink": stack.sink.model_copy(update={"group_prefix": f"{group_id}-sink"}),
        }
    )
    stop = threading.Event()
    bridge = Bridge(
        make_client(mqtt),
        make_producer(kafka),
        mqtt,
        BridgeSettings(),
        topic_name("readings_mqtt", kafka.topic_prefix),
        topic_name("dead_letters", kafka.topic_prefix),
        BridgeMetrics(CollectorRegistry()),
    )
    ingest = build_ingest(settings, CollectorRegistry())
    sink = build_sink(settings, "readings", SinkMetrics(CollectorRegistry()))
    threads = [
        threading.Thread(target=s.run, args=(stop,), daemon=True) for s in (bridge, ingest, sink)
    ]
    for t in threads:
        t.start()
    try:
        assert bridge.subscribed.wait(10)
        delivered: list[Delivery] = []
        result = run_simulation(
            plan,
            MqttPublisher(gateway_settings(mqtt)),
            count=200,
            paced=False,
            on_published=delivered.append,
        )
        assert result.published == 200 and result.failed == 0
        assert result.malformed > 0 and result.duplicates > 0

        expected: dict[tuple[str, datetime], Decimal] = {}
        broken_items = 0
        for d in delivered:
            readings = d.message.readings
            if any(r.malformed == "truncated" for r in readings):
                broken_items += 1  # the whole payload is unreadable: one dead letter
                continue
            for r in readings:
                if r.malformed is None:
                    expected[(r.sensor_id, r.capture_dt)] = Decimal(str(r.temperature))
                else:
                    broken_items += 1

        def stored() -> dict[tuple[str, datetime], Decimal]:
            with psycopg.connect(db.url) as conn:
                conn.execute(f'SET search_path TO "{db.db_schema}"')
                rows = conn.execute(
                    "SELECT sensor_id, capture_dt, temperature FROM readings"
                ).fetchall()
            return {(s, c): t for s, c, t in rows}

        wait_for(
            lambda: len(stored()) >= len(expected),
            timeout=60,
            what=f"{len(expected)} distinct readings in the database",
        )
        assert stored() == expected
        dead = read_topic(
            kafka,
            topic_name("dead_letters", kafka.topic_prefix),
            until=lambda m: len(m) >= broken_items,
            timeout=30,
        )
        assert len(dead) == broken_items
    finally:
        stop.set()
        for t in threads:
            t.join(40)
        ingest.consumer.close()
        ingest.directory.close()
        sink.consumer.close()
