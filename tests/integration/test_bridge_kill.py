"""SIGKILL the bridge while gateways publish at QoS 1, restart it: no reading is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt_client
import pytest

from iotmon.settings import KafkaSettings, MqttSettings
from schemas.topics import topic_name
from tests.helpers import read_topic, value_of

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
    pub.connect(mqtt.host, mqtt.port)
    pub.loop_start()
    raw = topic_name("readings_raw", kafka.topic_prefix)
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
        "IOTMON_BRIDGE__METRICS_PORT": "0",
    }
    log = tmp_path / "bridge.log"
    bridge = start_bridge(env, log)
    wait_subscribed(kafka, mqtt, "1")

    published: list[int] = []
    handed_over = [0]  # messages given to the MQTT client so far
    done = threading.Event()

    def gateways() -> None:
        pub = mqtt_client.Client(
            mqtt_client.CallbackAPIVersion.VERSION2, client_id=f"gw-{mqtt.client_id}"
        )
        pub.max_inflight_messages_set(200)
        pub.connect(mqtt.host, mqtt.port)
        pub.loop_start()
        pending = []
        for seq in range(TOTAL):
            sensor = f"TEMPIOT-A{seq % 50:03d}"
            payload = orjson.dumps({"sensor_id": sensor, "seq": seq})
            pending.append(
                (seq, pub.publish(f"{mqtt.topic_prefix}sensors/{sensor}/readings", payload, qos=1))
            )
            handed_over[0] = seq + 1
            if seq % 100 == 99:
                time.sleep(0.05)
        for seq, info in pending:
            info.wait_for_publish(30)  # PUBACK from the broker: the gateway's duty is done
            published.append(seq)
        pub.loop_stop()
        pub.disconnect()
        done.set()

    thread = threading.Thread(target=gateways, daemon=True)
    thread.start()
    time.sleep(0.6)
    at_kill = handed_over[0]
    bridge.send_signal(signal.SIGKILL)
    bridge.wait(10)
    time.sleep(1.0)  # gateways keep publishing while no bridge runs
    bridge = start_bridge(env, log)
    try:
        assert done.wait(60), "the gateways could not publish"
        assert len(published) == TOTAL
        assert 0 < at_kill < TOTAL, "the kill must land while the gateways publish"

        def seqs(msgs: list) -> set[int]:  # type: ignore[type-arg]
            found = set()
            for m in msgs:
                value = value_of(m)
                if value.startswith(b"{"):
                    found.add(orjson.loads(value)["seq"])
            return found

        got = read_topic(
            kafka,
            topic_name("readings_raw", kafka.topic_prefix),
            until=lambda m: len(seqs(m)) >= TOTAL,
            timeout=60,
        )
        missing = set(published) - seqs(got)
        assert not missing, f"{len(missing)} readings lost, e.g. {sorted(missing)[:10]}"
    finally:
        bridge.terminate()
        bridge.wait(40)
    assert bridge.returncode == 0, log.read_text()[-2000:]
