"""Drill: restart Mosquitto, restart the Kafka broker, and stop PostgreSQL for 30 s, while
gateways publish. The path is simulator -> Mosquitto -> bridge -> Kafka -> ingest ->
readings sink -> PostgreSQL, and ingest -> worker (Faust) -> aggregates sink, with every
stage a real process that keeps running through the outages. Every reading that the broker
acknowledged must end in the database exactly once, and the hourly aggregates must count
exactly the stored readings of each sensor-hour.

This drill restarts the services of the local stack (`iotmon stack`), so it needs the stack
that the test run manages.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from iotmon.settings import DatabaseSettings, KafkaSettings, MqttSettings, Settings
from iotmon.stack import Stack
from producers.masterdata import import_master_data
from producers.simulate_cmd import Delivery, MqttPublisher, SimulationResult, run_simulation
from producers.simulator import build_plan, master_data
from tests.helpers import gateway_settings, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RATE_INTERVAL_S = 0.2  # 40 sensors, one reading each every 0.2 s: 200 readings/s
SENSORS = 40
KAFKA_DOWN_S = 20  # beyond every consumer's session timeout: the groups must be rejoined


def stored(db: DatabaseSettings) -> list[tuple[str, datetime]]:
    with psycopg.connect(db.url, connect_timeout=3) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        return [(s, c) for s, c in conn.execute("SELECT sensor_id, capture_dt FROM readings")]


def counts_per_hour(db: DatabaseSettings) -> tuple[dict[tuple[str, datetime], int], ...]:
    """(stored readings, aggregated count) per sensor and UTC hour (Asia/Seoul hours are
    whole UTC hours)."""
    with psycopg.connect(db.url, connect_timeout=3) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        stored = {
            (s, h): n
            for s, h, n in conn.execute(
                "SELECT sensor_id,"
                " date_trunc('hour', capture_dt AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', count(*)"
                " FROM readings GROUP BY 1, 2"
            )
        }
        counted = {
            (s, h): n
            for s, h, n in conn.execute(
                "SELECT sensor_id, hour_start, temperature_count FROM hourly_aggregates"
            )
        }
    return stored, counted


def test_service_restarts_lose_nothing(
    stack: Settings,
    kafka: KafkaSettings,
    mqtt: MqttSettings,
    db: DatabaseSettings,
    group_id: str,
    tmp_path: Path,
) -> None:
    if not stack.stack.manage_postgres:
        pytest.fail("this drill restarts PostgreSQL: run it on the stack `iotmon stack` manages")
    services = Stack(stack)
    plan = build_plan(
        SENSORS,
        start=datetime.now(UTC) - timedelta(minutes=30),
        interval_s=RATE_INTERVAL_S,
        seed=21,
    )
    import_master_data(db, kafka, master_data(plan.sensors))
    env = {
        **os.environ,
        "IOTMON_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        "IOTMON_DB__DB_SCHEMA": db.db_schema,
        # The stack's database login (its password file), although the state is elsewhere.
        "IOTMON_DB__URL": db.url,
        "IOTMON_MQTT__TOPIC_PREFIX": mqtt.topic_prefix,
        "IOTMON_MQTT__CLIENT_ID": mqtt.client_id,
        "IOTMON_MQTT__USERNAME": str(mqtt.username),
        "IOTMON_MQTT__PASSWORD_FILE": str(mqtt.password_file),
        "IOTMON_INGEST__GROUP_ID": f"{group_id}-ingest",
        "IOTMON_SINK__GROUP_PREFIX": f"{group_id}-sink",
        "IOTMON_SINK__MAX_BACKOFF_S": "1",
        "IOTMON_WORKER__APP_ID": f"{group_id}-worker",
        "IOTMON_WORKER__WEB_PORT": "16301",
        "IOTMON_WORKER__SILENT_AFTER_S": "3600",
        "IOTMON_STACK__STATE_DIR": str(tmp_path / "state"),
        **{f"IOTMON_{s}__METRICS_PORT": "0" for s in ("BRIDGE", "INGEST", "SINK", "WORKER")},
    }
    procs = []
    for name, args in (
        ("bridge", ["bridge"]),
        ("ingest", ["ingest"]),
        ("worker", ["worker"]),
        ("sink", ["sink", "--only", "readings", "--only", "aggregates"]),
    ):
        with (tmp_path / f"{name}.log").open("ab") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "iotmon", *args],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    delivered: list[Delivery] = []
    result: list[SimulationResult] = []
    total = int(SENSORS / RATE_INTERVAL_S * 75)  # 75 s of publishing
    simulator = threading.Thread(
        target=lambda: result.append(
            run_simulation(
                plan,
                MqttPublisher(gateway_settings(mqtt)),
                count=total,
                on_published=delivered.append,
            )
        ),
        daemon=True,
    )
    try:
        time.sleep(3)  # the bridge subscribes
        simulator.start()
        time.sleep(5)
        services.mosquitto.down()  # gateways and the bridge lose their broker
        time.sleep(2)
        services.mosquitto.up()
        time.sleep(8)
        services.kafka.down()  # every stage loses Kafka, for longer than its sessions last
        time.sleep(KAFKA_DOWN_S)
        services.kafka.up()
        time.sleep(8)
        services.postgres.down()  # the sink loses the database for 30 s
        time.sleep(30)
        services.postgres.up()
        simulator.join(180)
        assert result, "the simulator did not finish"
        confirmed = {
            (r.sensor_id, r.capture_dt)
            for d in delivered
            if d.error is None
            for r in d.message.readings
        }
        assert len(confirmed) > total * 0.5, "most readings must have been acknowledged"

        def all_arrived() -> bool:
            try:
                return confirmed <= set(stored(db))
            except psycopg.OperationalError:
                return False

        wait_for(all_arrived, timeout=240, what=f"{len(confirmed)} acknowledged readings stored")
        rows = stored(db)
        assert len(rows) == len(set(rows)), "a reading was stored twice"

        def aggregates_count_the_readings() -> bool:
            try:
                stored_counts, counted = counts_per_hour(db)
            except psycopg.OperationalError:
                return False
            return stored_counts == counted

        try:
            wait_for(aggregates_count_the_readings, timeout=120, what="the hourly counts")
        except AssertionError:
            stored_counts, counted = counts_per_hour(db)
            differ = {
                k: (stored_counts.get(k), counted.get(k))
                for k in stored_counts.keys() | counted.keys()
                if stored_counts.get(k) != counted.get(k)
            }
            raise AssertionError(
                f"{len(differ)} sensor-hours where the aggregates do not count the stored"
                f" readings (stored, counted): {sorted(differ.items())[:10]}"
            ) from None
        assert all(p.poll() is None for p in procs), "a stage died on the way"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(40)
            except subprocess.TimeoutExpired:
                p.kill()
        services.up()  # whatever happened, later tests get their stack back
