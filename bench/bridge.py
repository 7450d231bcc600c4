"""MQTT bridge throughput: messages/s from Mosquitto (QoS 1) into Kafka, with zero loss.

    python -m bench.bridge [--messages 100000]

Two runs over the same messages, in the same run of the script:

* ``baseline: Mosquitto alone``: a plain paho QoS 1 subscriber that only counts. This is the
  ceiling that the broker, the Python publisher and a Python subscriber set on this machine.
* ``iotmon bridge``: the real bridge process (manual acks after Kafka confirmed each
  message); done when the raw topic holds every message.

The publisher is the simulator's (paho, QoS 1, 1,000 messages in flight); every message must
be acknowledged by the broker (PUBACK) and arrive (counted on the far side).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

from bench.common import RESULTS, write_results
from iotmon.gateways_cmd import local_gateway
from iotmon.settings import KafkaSettings, MqttSettings, Settings
from iotmon.topics import delete_prefixed_topics, ensure_topics
from producers.simulate_cmd import MqttPublisher, mqtt_topic
from producers.simulator import Message
from schemas.topics import topic_name

PUBLISHERS = 4  # publishing processes (one sensor topic each)


def messages(count: int, sensors: int = PUBLISHERS) -> list[Message]:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    out = []
    for i in range(count):
        sensor = f"TEMPIOT-B{i % sensors:04d}"
        body = {"sensor_id": sensor, "capture_dt": now, "temperature": 25.5, "humidity": 50.0}
        out.append(Message(0.0, sensor, orjson.dumps(body), ()))
    return out


BENCH_GATEWAY = "bench-gateway"  # may publish below bench/ (every run's prefix)


def login_args(mqtt_settings: MqttSettings) -> list[str]:
    """mosquitto_pub/sub options of the account (the broker refuses anonymous clients)."""
    user, password = mqtt_settings.login()
    return ["-u", user or "", "-P", password or ""] if user else []


def as_gateway(settings: Settings, mq: MqttSettings) -> MqttSettings:
    """``mq`` logged in as the bench's gateway account."""
    login = local_gateway(settings, BENCH_GATEWAY, write=["bench/#"])
    return mq.model_copy(
        update={
            "username": login.username,
            "password": None,
            "password_file": login.password_file,
        }
    )


def publish_all(mqtt_settings: MqttSettings, batch: list[Message]) -> float:
    """Publish every message at QoS 1; returns seconds until every PUBACK.

    ``mosquitto_pub -l`` (C, one process per sensor topic, 1,000 in flight) when it is
    installed, so that the publisher is not what is measured; else the simulator's paho
    publisher."""
    tool = shutil.which("mosquitto_pub")
    if tool is None or len(batch) < PUBLISHERS:
        return publish_python(mqtt_settings, batch)
    by_sensor: dict[str, list[bytes]] = {}
    for m in batch:
        by_sensor.setdefault(m.sensor_id, []).append(m.payload)
    started = time.perf_counter()
    procs = []
    for sensor, payloads in by_sensor.items():
        proc = subprocess.Popen(
            [
                tool,
                "-h",
                mqtt_settings.host,
                "-p",
                str(mqtt_settings.port),
                "-q",
                "1",
                "-M",
                "1000",
                "-l",
                "-t",
                mqtt_topic(mqtt_settings, sensor),
                "-i",
                f"bench-pub-{uuid.uuid4().hex[:8]}",
                *login_args(mqtt_settings),
            ],
            stdin=subprocess.PIPE,
        )
        procs.append((proc, b"\n".join(payloads) + b"\n"))
    writers = [
        threading.Thread(target=proc.communicate, args=(data,), daemon=True) for proc, data in procs
    ]
    for w in writers:
        w.start()
    for w in writers:
        w.join(600)
    failed = [proc.returncode for proc, _ in procs if proc.returncode != 0]
    if failed:
        raise RuntimeError(f"mosquitto_pub failed: exit codes {failed}")
    return time.perf_counter() - started


def publish_python(mqtt_settings: MqttSettings, batch: list[Message]) -> float:
    publisher = MqttPublisher(mqtt_settings)
    started = time.perf_counter()
    confirmed = 0
    for message in batch:
        while publisher.in_flight >= 1000:
            confirmed += len(publisher.drain(0.01))
        publisher.publish(message)
    failed = [d for d in publisher.close(120) if d.error is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} messages were not acknowledged by the broker")
    return time.perf_counter() - started


def baseline(settings: Settings, batch: list[Message]) -> dict[str, Any]:
    """Mosquitto alone: ``mosquitto_sub`` (C, QoS 1) counts what arrives."""
    mq = settings.mqtt.model_copy(update={"topic_prefix": f"bench/{uuid.uuid4().hex[:8]}/"})
    tool = shutil.which("mosquitto_sub")
    if tool is None:
        raise RuntimeError("mosquitto_sub (mosquitto-clients) is needed for the baseline")
    sub = subprocess.Popen(
        [
            tool,
            "-h",
            mq.host,
            "-p",
            str(mq.port),
            "-q",
            "1",
            "-t",
            mqtt_topic(mq, "+"),
            "-C",
            str(len(batch)),
            "-i",
            f"bench-sub-{uuid.uuid4().hex[:6]}",
            *login_args(settings.mqtt),  # the bridge's account: it may read
        ],
        stdout=subprocess.PIPE,
    )
    time.sleep(1.0)  # mosquitto_sub has subscribed
    started = time.perf_counter()
    publish_s = publish_all(as_gateway(settings, mq), batch)
    out, _ = sub.communicate(timeout=300)
    elapsed = time.perf_counter() - started
    received = out.count(b"\n")
    return {
        "run": "baseline: Mosquitto alone (mosquitto_sub, QoS 1, no Kafka)",
        "messages": len(batch),
        "arrived": received,
        "seconds": round(elapsed, 2),
        "publisher_s": round(publish_s, 2),
        "zero_loss": "yes" if received == len(batch) else "NO",
    }


def raw_count(kafka: KafkaSettings) -> int:
    consumer = Consumer(
        {"bootstrap.servers": kafka.bootstrap_servers, "group.id": f"bench-{uuid.uuid4().hex}"}
    )
    name = topic_name("readings_raw", kafka.topic_prefix)
    try:
        meta = consumer.list_topics(name, timeout=10).topics[name]
        total = 0
        for p in meta.partitions:
            for attempt in range(50):  # leaders of a new topic take a moment
                try:
                    low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
                    break
                except KafkaException:
                    if attempt == 49:
                        raise
                    time.sleep(0.2)
            total += high - low
        return total
    finally:
        consumer.close()


def bridged(settings: Settings, batch: list[Message]) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    kafka = settings.kafka.model_copy(update={"topic_prefix": f"bench.{run_id}."})
    mq = settings.mqtt.model_copy(
        update={"topic_prefix": f"bench/{run_id}/", "client_id": f"iotmon-bridge-{run_id}"}
    )
    ensure_topics(kafka)
    log = RESULTS / "logs" / f"bridge-{run_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "IOTMON_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        "IOTMON_MQTT__TOPIC_PREFIX": mq.topic_prefix,
        "IOTMON_MQTT__CLIENT_ID": mq.client_id,
        "IOTMON_BRIDGE__METRICS_PORT": "0",
        "IOTMON_LOG__LEVEL": "WARNING",
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "iotmon", "bridge"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # Ready when a probe published now reaches Kafka.
        deadline = time.monotonic() + 60
        while raw_count(kafka) == 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the bridge did not start; see {log}")
            publish_all(as_gateway(settings, mq), batch[:1])
            time.sleep(0.5)
        before = raw_count(kafka)
        started = time.perf_counter()
        publish_s = publish_all(as_gateway(settings, mq), batch)
        arrived = raw_count(kafka) - before
        deadline = time.monotonic() + 300
        while arrived < len(batch) and time.monotonic() < deadline:
            time.sleep(0.1)
            arrived = raw_count(kafka) - before
        elapsed = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(30)
        delete_prefixed_topics(kafka)
    return {
        "run": "iotmon bridge (Mosquitto -> Kafka, ack after Kafka)",
        "messages": len(batch),
        "arrived": arrived,
        "seconds": round(elapsed, 2),
        "publisher_s": round(publish_s, 2),
        "zero_loss": "yes" if arrived == len(batch) else "NO",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    settings = Settings()
    batch = messages(args.messages)
    rows = [baseline(settings, batch)]
    print(rows[-1], flush=True)
    rows.append(bridged(settings, batch))
    print(rows[-1], flush=True)
    for row in rows:
        row["msgs_per_s"] = round(row["messages"] / row["seconds"])
        row["ratio_to_baseline"] = round(rows[0]["seconds"] / row["seconds"], 2)
    write_results(
        "bridge",
        rows,
        [
            "run",
            "msgs_per_s",
            "ratio_to_baseline",
            "seconds",
            "publisher_s",
            "arrived",
            "zero_loss",
        ],
        extra={"messages": args.messages, "targets": {"msgs_per_s": 20000}},
        plot=("run", "msgs_per_s", "messages/s into the far side (higher is better)"),
    )


if __name__ == "__main__":
    main()
