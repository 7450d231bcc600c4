"""Harness for stream-processing tests: real `iotmon worker` processes and the real sinks,
on the test's own topics, consumer groups and database schema."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import psycopg
from prometheus_client import CollectorRegistry

from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.kafka import make_producer
from schemas.readings import Reading, ReadingBatch
from schemas.topics import topic_name
from stream_apps.common.partitioning import partition_for
from stream_apps.sinks.main import build
from stream_apps.sinks.runner import SinkMetrics, SinkRunner
from tests.helpers import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class IotmonProcess:
    """One `iotmon <command>` subprocess; ``kill()`` is SIGKILL, ``stop()`` graceful."""

    command = ""

    def __init__(self, env: dict[str, str], log: Path, command: str | None = None) -> None:
        self.env = env
        self.log = log
        self.command = command or self.command
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "iotmon", self.command],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class WorkerProcess(IotmonProcess):
    """One `iotmon worker` subprocess, with a web port of its own."""

    command = "worker"

    def __init__(self, env: dict[str, str], log: Path) -> None:
        super().__init__({**env, "IOTMON_WORKER__WEB_PORT": str(free_port())}, log)


class Pipeline:
    """Workers as processes, the aggregates/alerts/latest sinks as threads in this process."""

    def __init__(
        self,
        stack: Settings,
        kafka: KafkaSettings,
        db: DatabaseSettings,
        test_id: str,
        tmp: Path,
        **worker: str,
    ) -> None:
        self.kafka, self.db, self.tmp = kafka, db, tmp
        self.env = {
            **os.environ,
            "IOTMON_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
            "IOTMON_WORKER__APP_ID": f"worker-{test_id}",
            "IOTMON_WORKER__METRICS_PORT": "0",
            "IOTMON_WORKER__TICK_INTERVAL_S": "1",
            "IOTMON_WORKER__IDLE_CLOSE_S": "3",
            "IOTMON_WORKER__SILENT_AFTER_S": "3600",
            "IOTMON_STACK__STATE_DIR": str(tmp / "state"),
            "IOTMON_LOG__LEVEL": "INFO",
            **{f"IOTMON_WORKER__{k.upper()}": v for k, v in worker.items()},
        }
        settings = stack.model_copy(
            update={
                "kafka": kafka,
                "db": db,
                "sink": stack.sink.model_copy(
                    update={"group_prefix": f"sink-{test_id}", "max_backoff_s": 0.5}
                ),
            }
        )
        self.registry = CollectorRegistry()
        metrics = SinkMetrics(self.registry)
        self.sinks: list[SinkRunner[Any]] = [
            build(settings, name, metrics) for name in ("aggregates", "alerts", "latest")
        ]
        self.stop_sinks = threading.Event()
        self.threads = [
            threading.Thread(target=s.run, args=(self.stop_sinks,), daemon=True) for s in self.sinks
        ]
        for t in self.threads:
            t.start()
        self.workers: list[WorkerProcess] = []
        self.producer = make_producer(kafka)
        self.partitions = kafka.default_partitions

    def worker(self) -> WorkerProcess:
        w = WorkerProcess(self.env, self.tmp / f"worker-{len(self.workers)}.log").start()
        self.workers.append(w)
        return w

    def send(self, readings: Iterable[Reading], batch: int = 200) -> None:
        """Readings in delivery order, batched per partition as the ingest stage does."""
        by_partition: dict[int, list[Reading]] = defaultdict(list)
        topic = topic_name("readings", self.kafka.topic_prefix)

        def flush(p: int) -> None:
            self.producer.produce(
                topic,
                ReadingBatch(readings=by_partition[p]).model_dump_json().encode(),
                partition=p,
            )
            by_partition[p] = []

        for r in readings:
            p = partition_for(r.sensor_id, self.partitions)
            by_partition[p].append(r)
            if len(by_partition[p]) >= batch:
                flush(p)
        for p, rest in list(by_partition.items()):
            if rest:
                flush(p)
        assert self.producer.flush(30) == 0

    def wait_ready(self, timeout: float = 60) -> None:
        """A probe reading in every partition has gone through the workers (not a sleep)."""
        probes: dict[int, str] = {}
        n = 0
        while len(probes) < self.partitions:
            sid = f"PROBE-{n:04d}"
            probes.setdefault(partition_for(sid, self.partitions), sid)
            n += 1
        # Old enough not to move the partitions' event time past the data of a test.
        then = datetime.now(UTC) - timedelta(days=2)
        self.send(
            Reading(
                sensor_id=sid,
                loc_id=sid[-4:],
                capture_dt=then,
                temperature=20,
                humidity=50,
                pcv_temperature=None,
                source="kafka",
                received_at=then,
            )
            for sid in probes.values()
        )
        wait_for(
            lambda: (
                self.scalar("SELECT count(*) FROM latest_readings WHERE sensor_id LIKE 'PROBE-%%'")
                == len(probes)
            ),
            timeout=timeout,
            what="the workers to process a probe",
        )

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.db.url) as conn:
            conn.execute(f'SET search_path TO "{self.db.db_schema}"')
            return conn.execute(sql, params).fetchall()

    def scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def finals(self, like: str = "TEMPIOT-%") -> dict[tuple[str, str, str], dict[str, object]]:
        rows = self.query(
            "SELECT sensor_id, ymd, hour, temperature_count,"
            " temperature_max, temperature_min, round(temperature_sum / temperature_count, 2),"
            " humidity_max, humidity_min, round(humidity_sum / humidity_count, 2),"
            " pcv_temperature_max, pcv_temperature_min,"
            " round(pcv_temperature_sum / pcv_temperature_count, 2)"
            " FROM hourly_aggregates WHERE is_final AND sensor_id LIKE %s",
            (like,),
        )
        out = {}
        for r in rows:
            doc: dict[str, object] = {"count": r[3]}
            for i, metric in enumerate(("temperature", "humidity", "pcv_temperature")):
                doc[f"{metric}_max"] = str(r[4 + 3 * i])
                doc[f"{metric}_min"] = str(r[5 + 3 * i])
                doc[f"{metric}_avg"] = str(r[6 + 3 * i])
            out[(r[0], r[1], r[2])] = doc
        return out

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.stop_sinks.set()
        for t in self.threads:
            t.join(30)
        for s in self.sinks:
            s.consumer.close()
