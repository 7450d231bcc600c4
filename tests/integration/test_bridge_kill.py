"""SIGKILL the bridge while the simulator publishes at QoS 1, restart it: no reading is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt_client
import pytest

from iotmon.settings import KafkaSettings, MqttSettings
from producers.mqtt_connect import apply_login
from producers.simulate_cmd import Delivery, MqttPublisher, SimulationResult, run_simulation
from producers.simulator import build_plan
from schemas.topics import topic_name
from tests.helpers import gateway_settings, read_topic, value_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOTAL = 3000


def start_bridge(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "iotmon", "bridge"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_subscribed(kafka: KafkaSettings, mqtt: MqttSettings, marker: str) -> None:
    """Publish probes until one reaches Kafka: the bridge is connected and subscribed."""
    pub = mqtt_client.Client(mqtt_client.CallbackAPIVersion.VERSION2)
    apply_login(pub, gateway_settings(mqtt))
    pub.connect(mqtt.host, mqtt.port)
    pub.loop_start()
    raw = topic_name("readings_mqtt", kafka.topic_prefix)
    try:
        for _ in range(30):
            pub.publish(
                f"{mqtt.topic_prefix}sensors/PROBE-{marker}/readings", b"probe", qos=1
            ).wait_for_publish(5)
            if read_topic(
                kafka,
                raw,
                until=lambda m: any(x.key() == f"PROBE-{marker}".encode() for x in m),
                timeout=1.5,
            ):
                return
        raise AssertionError("the bridge never subscribed")
    finally:
        pub.loop_stop()
        pub.disconnect()


def test_sigkill_and_restart_loses_nothing(
    kafka: KafkaSettings, mqtt: MqttSettings, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "IOTMON_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        "IOTMON_MQTT__TOPIC_PREFIX": mqtt.topic_prefix,
        "IOTMON_MQTT__CLIENT_ID": mqtt.client_id,  # same session across the restart
        "IOTMON_MQTT__USERNAME": str(mqtt.username),
        "IOTMON_MQTT__PASSWORD_FILE": str(mqtt.password_file),
        "IOTMON_BRIDGE__METRICS_PORT": "0",
    }
    log = tmp_path / "bridge.log"
    bridge = start_bridge(env, log)
    wait_subscribed(kafka, mqtt, "1")

    plan = build_plan(50, start=datetime.now(UTC) - timedelta(minutes=10), interval_s=0.05, seed=3)
    delivered: list[Delivery] = []
    result: list[SimulationResult] = []
    simulator = threading.Thread(
        target=lambda: result.append(
            run_simulation(
                plan,
                MqttPublisher(gateway_settings(mqtt)),
                count=TOTAL,
                on_published=delivered.append,
            )
        ),
        daemon=True,
    )
    simulator.start()  # paced: 1,000 messages/s at QoS 1 for 3 s
    time.sleep(0.8)
    at_kill = len(delivered)
    bridge.send_signal(signal.SIGKILL)
    bridge.wait(10)
    time.sleep(1.0)  # the gateways keep publishing while no bridge runs
    bridge = start_bridge(env, log)
    try:
        simulator.join(60)
        assert result and result[0].published == TOTAL and result[0].failed == 0
        assert 0 < at_kill < TOTAL, "the kill must land while the simulator publishes"
        published = {d.message.payload for d in delivered}
        raw = topic_name("readings_mqtt", kafka.topic_prefix)
        got = read_topic(
            kafka, raw, until=lambda m: published <= {value_of(x) for x in m}, timeout=60
        )
        missing = published - {value_of(x) for x in got}
        assert not missing, f"{len(missing)} of {TOTAL} readings lost"
    finally:
        bridge.terminate()
        bridge.wait(40)
    assert bridge.returncode == 0, log.read_text()[-2000:]
