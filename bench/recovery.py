"""Recovery: time from restarting a SIGKILLed worker (1,000 sensors, an hour of state) until
its consumer lag on the readings topic is back to zero.

    python -m bench.recovery [--sensors 1000] [--minutes 60]

A worker processes an hour of readings (one per sensor per minute) and is killed with
SIGKILL. Ten more seconds of readings then arrive while it is down, and it is started again.
The clock runs from the restart until the group has committed every offset of the readings
topic. That includes Faust restoring its tables from the changelog.

The baseline, measured in the same run, is a cold start: a fresh worker (a new group, no
state) started on an empty readings topic, until it has joined and committed its (empty)
positions. That is the start-up cost that any restart pays.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql

from bench.common import RESULTS, write_results
from iotmon.db.migrate import migrate
from iotmon.settings import KafkaSettings, Settings
from iotmon.topics import delete_prefixed_topics, ensure_topics
from producers.kafka import make_producer
from producers.masterdata import import_master_data
from producers.simulator import build_plant, master_data
from schemas.readings import Reading, ReadingBatch
from schemas.topics import topic_name
from stream_apps.common.partitioning import partition_for


def send(kafka: KafkaSettings, readings: list[Reading], batch: int = 200) -> None:
    """As the ingest stage writes them: batches per partition of the readings topic."""
    producer = make_producer(kafka)
    topic = topic_name("readings", kafka.topic_prefix)
    by_partition: dict[int, list[Reading]] = defaultdict(list)

    def flush(p: int) -> None:
        value = ReadingBatch(readings=by_partition[p]).model_dump_json().encode()
        while True:
            try:
                producer.produce(topic, value, partition=p)
                break
            except BufferError:
                producer.poll(0.05)
        by_partition[p] = []

    for r in readings:
        p = partition_for(r.sensor_id, kafka.default_partitions)
        by_partition[p].append(r)
        if len(by_partition[p]) >= batch:
            flush(p)
    for p, rest in list(by_partition.items()):
        if rest:
            flush(p)
    if producer.flush(60):
        raise RuntimeError("readings were not confirmed by Kafka")


def readings(sensors: list[tuple[str, str]], start: datetime, minutes: float) -> list[Reading]:
    out = []
    for m in range(int(minutes * 60) // 60 or 1):
        at = start + timedelta(minutes=m)
        for i, (sensor, loc) in enumerate(sensors):
            out.append(
                Reading(
                    sensor_id=sensor,
                    loc_id=loc,
                    capture_dt=at + timedelta(milliseconds=i),
                    temperature=Decimal("24.5") + Decimal(m % 10),
                    humidity=Decimal("55.0"),
                    pcv_temperature=None,
                    source="kafka",
                    received_at=at,
                )
            )
    return out


def lag(kafka: KafkaSettings, group: str) -> int | None:
    """Total lag of ``group`` on the readings topic; None before it committed anything."""
    topic = topic_name("readings", kafka.topic_prefix)
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group})
    try:
        parts = [
            TopicPartition(topic, p)
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ]
        committed = consumer.committed(parts, timeout=10)
        total = 0
        for tp in committed:
            high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)[
                1
            ]
            if tp.offset < 0:
                if high > 0:
                    return None
                continue
            total += high - tp.offset
        return total
    finally:
        consumer.close()


class Worker:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "iotmon", "worker"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(40)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def group_of(settings: Settings, app_id: str) -> str:
    """The worker's consumer group: its app id, behind the deployment's topic prefix."""
    return settings.kafka.topic_prefix + app_id


def wait_lag_zero(kafka: KafkaSettings, group: str, timeout: float, worker: Worker) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if worker.proc.poll() is not None:
            raise RuntimeError("the worker exited")
        if lag(kafka, group) == 0:
            return time.perf_counter() - started
        time.sleep(0.2)
    raise RuntimeError(f"lag of {group} not zero after {timeout} s")


def setup(base: Settings, sensors: int) -> tuple[Settings, list[tuple[str, str]], str]:
    run_id = uuid.uuid4().hex[:8]
    kafka = base.kafka.model_copy(update={"topic_prefix": f"bench.{run_id}."})
    db = base.db.model_copy(update={"db_schema": f"bench_rec_{run_id}"})
    ensure_topics(kafka)
    migrate(db)
    plant = build_plant(sensors, seed=3)
    data = master_data(plant)
    import_master_data(db, kafka, data)
    pairs = [(s.sensor_id, s.loc_id) for s in data.sensors]
    return base.model_copy(update={"kafka": kafka, "db": db}), pairs, run_id


def env_for(settings: Settings, app_id: str, log_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "IOTMON_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "IOTMON_DB__DB_SCHEMA": settings.db.db_schema,
        # The stack's database login (its password file), although the state is elsewhere.
        "IOTMON_DB__URL": settings.db.url,
        "IOTMON_WORKER__APP_ID": app_id,
        "IOTMON_WORKER__METRICS_PORT": "0",
        "IOTMON_WORKER__SILENT_AFTER_S": "86400",
        "IOTMON_STACK__STATE_DIR": str(log_dir),
        "IOTMON_LOG__LEVEL": "INFO",
    }


def teardown(settings: Settings) -> None:
    kafka = settings.kafka
    delete_prefixed_topics(kafka)
    with psycopg.connect(settings.db.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(settings.db.db_schema))
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=60.0)
    args = parser.parse_args()
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    base = Settings()

    # Baseline: cold start on an empty topic.
    settings, _, run_id = setup(base, 10)
    app = f"worker-rec-{run_id}"
    try:
        started = time.perf_counter()
        worker = Worker(env_for(settings, app, logs / run_id), logs / f"recovery-{run_id}-cold.log")
        # An empty topic: lag 0 as soon as the group has positions; wait for the join.
        send(settings.kafka, readings([("TEMPIOT-PROBE", "PROBE")], datetime.now(UTC), 1))
        wait_lag_zero(settings.kafka, group_of(settings, app), 120, worker)
        cold = time.perf_counter() - started
        worker.stop()
    finally:
        teardown(settings)

    settings, sensors, run_id = setup(base, args.sensors)
    app = f"worker-rec-{run_id}"
    env = env_for(settings, app, logs / run_id)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    hour = readings(sensors, now - timedelta(minutes=args.minutes + 1), args.minutes)
    try:
        worker = Worker(env, logs / f"recovery-{run_id}-first.log")
        send(settings.kafka, hour)
        fill = wait_lag_zero(settings.kafka, group_of(settings, app), 900, worker)
        worker.kill()
        send(settings.kafka, readings(sensors, now - timedelta(seconds=50), 0.2))
        started = time.perf_counter()
        worker = Worker(env, logs / f"recovery-{run_id}-restart.log")
        recovery = wait_lag_zero(settings.kafka, group_of(settings, app), 600, worker)
        worker.stop()
    finally:
        teardown(settings)
    rows: list[dict[str, Any]] = [
        {"run": "baseline: cold start, no state", "seconds": round(cold, 2), "target_s": ""},
        {
            "run": f"restart after SIGKILL ({args.sensors} sensors,"
            f" {args.minutes:.0f} min of state)",
            "seconds": round(recovery, 2),
            "target_s": 30,
        },
    ]
    for row in rows:
        row["meets_target"] = (
            "" if row["target_s"] == "" else ("yes" if row["seconds"] <= 30 else "NO")
        )
    write_results(
        "recovery",
        rows,
        ["run", "seconds", "target_s", "meets_target"],
        extra={"readings_of_state": len(hour), "first_processing_s": round(fill, 2)},
        plot=("run", "seconds", "seconds until lag is zero (lower is better)"),
    )


if __name__ == "__main__":
    main()
