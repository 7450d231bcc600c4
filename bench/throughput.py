"""End-to-end throughput, with two baselines over the same data in the same run.

    python -m bench.throughput [--readings 200000] [--sensors 1000]

For each run, the readings are first produced to the raw topic of a fresh topic prefix (as
gateways would: one JSON object per record, keyed by sensor), then the pipeline is started
and timed until the database holds every reading, the hourly aggregates count every
reading *and* ``alert_events`` holds every alert event the readings decide (one sensor in
ten stays hot past the thresholds' hold time and cools again, see :func:`payloads`; the
events due are counted beforehand with the pipeline's own lifecycle functions, and the
stored events and alerts are checked against them; zero loss is checked, not assumed):

* ``pipeline, N worker(s)``: ``iotmon ingest`` -> ``iotmon worker`` x N -> ``iotmon sink``
  (readings, aggregates, latest, alerts), all as separate processes.
* ``baseline (a)``: one plain confluent-kafka consumer loop in one process doing the same
  computation with the same functions (validation, local hours, threshold status, hourly
  max/sum/count) and batched COPY: the Python ceiling on this machine.
* ``baseline (b)``: the original system's way: the readings COPYed into the raw table, then
  the hourly aggregates computed by batch SQL; its freshness is the batch interval (an hour)
  plus the time the batch takes.

Rates are readings per second from the first reading in the database to the last (start-up
excluded; the wall time including start-up is reported too).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
from confluent_kafka import Consumer
from confluent_kafka import Message as KafkaMessage
from psycopg import sql

from bench.common import RESULTS, write_results
from iotmon.db.migrate import migrate
from iotmon.settings import KafkaSettings, Settings
from iotmon.topics import delete_prefixed_topics, ensure_topics
from producers.kafka import make_producer
from producers.masterdata import import_master_data
from producers.simulator import SimSensor, build_plant, master_data
from producers.thresholds import import_thresholds, load_thresholds_file, validate_rows
from schemas.alerts import AlertTransition
from schemas.common import Metric, Status
from schemas.master import SensorRecord
from schemas.readings import Reading
from schemas.topics import topic_name
from stream_apps.common.directory import SensorDirectory, ThresholdDirectory
from stream_apps.ingest.validate import Accepted, Limits, validate_payload
from stream_apps.processing.lifecycle import MetricAlertState, Subject, step
from stream_apps.processing.rules import ThresholdIndex
from stream_apps.processing.windows import local_hour

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = ROOT / "infra" / "examples" / "thresholds.yaml"
METRICS: tuple[Metric, ...] = ("temperature", "humidity", "pcv_temperature")
_AGG_VALUES = [f"{m}_{part}" for m in METRICS for part in ("count", "sum", "max")]
_AGG_COLUMNS = sql.SQL(", ").join(
    sql.Identifier(c) for c in ["sensor_id", "hour_start", "loc_id", "ymd", "hour", *_AGG_VALUES]
)
_AGG_COPY = sql.SQL("COPY agg_in ({}) FROM STDIN").format(_AGG_COLUMNS)
_AGG_UPSERT = sql.SQL(
    "INSERT INTO hourly_aggregates ({cols}) SELECT {cols} FROM agg_in"
    " ON CONFLICT (sensor_id, hour_start) DO UPDATE SET ({values}) = ({incoming})"
).format(
    cols=_AGG_COLUMNS,
    values=sql.SQL(", ").join(sql.Identifier(c) for c in _AGG_VALUES),
    incoming=sql.SQL(", ").join(sql.Identifier("excluded", c) for c in _AGG_VALUES),
)


class Run:
    """A fresh topic prefix and database schema with the master data and thresholds."""

    def __init__(self, base: Settings, label: str, sensors: int) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.label = label
        self.kafka = base.kafka.model_copy(update={"topic_prefix": f"bench.{self.id}."})
        self.db = base.db.model_copy(update={"db_schema": f"bench_tp_{self.id}"})
        self.settings = base.model_copy(update={"kafka": self.kafka, "db": self.db})
        ensure_topics(self.kafka)
        migrate(self.db)
        plant = build_plant(sensors, seed=7)
        import_master_data(self.db, self.kafka, master_data(plant))
        import_thresholds(self.db, self.kafka, load_thresholds_file(THRESHOLDS))
        self.plant = plant
        self.sensor_ids = [s.sensor_id for s in plant]

    def scalar(self, query: str) -> Any:
        with psycopg.connect(self.db.url) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.db.db_schema)))
            row = conn.execute(query).fetchone()
            return row[0] if row else None

    def drop(self) -> None:
        delete_prefixed_topics(self.kafka)
        with psycopg.connect(self.db.url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(self.db.db_schema)
                )
            )


ALERTING_EVERY = 10  # one sensor in ten stays hot long enough to raise alerts
HOT_STEPS, CYCLE_STEPS = 10, 24  # its readings: 100 s hot, then 140 s cool, and again


def payloads(sensor_ids: list[str], count: int, end: datetime) -> list[tuple[bytes, bytes]]:
    """``count`` readings, round-robin over the sensors, 10 s apart per sensor, the last
    ending at ``end``.

    Most sensors' values climb through the example thresholds and fall back every 140 s:
    every reading is evaluated, but none stays in a band for the example's 60 s hold (at
    most six readings, 50 s, in a row), so they raise nothing.  One sensor in ten
    (``ALERTING_EVERY``) reads 36-37 °C for ten readings (100 s, longer than the hold) and
    26 °C for the next fourteen (140 s, longer than the clear time), so it raises and
    resolves a temperature and a perceived-temperature alert in every such cycle."""
    per_sensor = -(-count // len(sensor_ids))
    start = end - timedelta(seconds=10 * per_sensor)
    out = []
    for i in range(count):
        n = i % len(sensor_ids)
        sensor = sensor_ids[n]
        step = i // len(sensor_ids)
        when = start + timedelta(seconds=10 * step, milliseconds=i % 997)
        if n % ALERTING_EVERY == 0:
            t = 36.0 + 0.5 * (step % 3) if step % CYCLE_STEPS < HOT_STEPS else 26.0
        else:
            t = 24.0 + 10.0 * ((step * 7 + i) % 100) / 100.0
        body = {
            "sensor_id": sensor,
            "capture_dt": when.isoformat().replace("+00:00", "Z"),
            "temperature": round(t, 1),
            "humidity": round(50.0 + (i % 30), 1),
        }
        out.append((sensor.encode(), orjson.dumps(body)))
    return out


def expected_alerts(
    plant: tuple[SimSensor, ...], records: list[tuple[bytes, bytes]]
) -> Counter[str]:
    """The alert events the pipeline must store for ``records``, by transition (and
    ``alerts``: the alerts raised), decided with the pipeline's own validation, bands and
    alert lifecycle.  Alerts are decided by capture times alone, and each sensor's readings
    are in order, so this count is exact, whatever the timing of the run."""
    now = datetime.now(UTC)
    directory = {
        s.sensor_id: SensorRecord(sensor=s.sensor, location=s.location, updated_at=now)
        for s in plant
    }
    bands = validate_rows(load_thresholds_file(THRESHOLDS))
    index = ThresholdIndex(b.model_copy(update={"threshold_id": n}) for n, b in enumerate(bands))
    states: dict[tuple[str, str], MetricAlertState] = {}
    counts: Counter[str] = Counter()
    for key, value in records:
        for result, _ in validate_payload(
            value,
            key_sensor_id=key.decode(),
            lookup=directory.get,
            limits=Limits(),
            now=now,
            source="kafka",
            received_at=now,
        ):
            if not isinstance(result, Accepted):
                continue
            r = result.reading
            record = directory[r.sensor_id]
            for metric, band_set in zip(METRICS, index.band_sets(record.location), strict=True):
                reading_value = getattr(r, metric)
                state = states.setdefault((r.sensor_id, metric), MetricAlertState())
                for event in step(
                    state,
                    Subject(r.sensor_id, r.loc_id, metric),
                    band_set.evaluate(reading_value),
                    reading_value,
                    r.capture_dt,
                    now,
                ):
                    counts[event.transition.value] += 1
                    counts["events"] += 1
                    counts["alerts"] += event.transition is AlertTransition.RAISED
    return counts


def produce(kafka: KafkaSettings, records: list[tuple[bytes, bytes]]) -> float:
    producer = make_producer(kafka)
    raw = topic_name("readings_raw", kafka.topic_prefix)
    started = time.perf_counter()
    for key, value in records:
        while True:
            try:
                producer.produce(raw, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
    remaining = producer.flush(60)
    if remaining:
        raise RuntimeError(f"{remaining} readings were not confirmed by Kafka")
    return time.perf_counter() - started


def wait_done(
    run: Run,
    expected: int,
    expected_events: int,
    timeout_s: float,
    procs: list[subprocess.Popen[bytes]],
) -> dict[str, Any]:
    """Poll until every reading is in ``readings`` and counted by ``hourly_aggregates``,
    and every alert event the readings decide is in ``alert_events``."""
    started = time.perf_counter()
    first_seen: float | None = None
    readings = counted = events = 0
    while time.perf_counter() - started < timeout_s:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a pipeline process exited with {p.returncode}")
        readings = run.scalar("SELECT count(*) FROM readings")
        counted = run.scalar("SELECT coalesce(sum(temperature_count), 0) FROM hourly_aggregates")
        events = run.scalar("SELECT count(*) FROM alert_events")
        now = time.perf_counter()
        if first_seen is None and readings > 0:
            first_seen = now
        if readings >= expected and counted >= expected and events >= expected_events:
            break
        time.sleep(0.25)
    done = time.perf_counter()
    if first_seen is None or readings < expected or counted < expected:
        raise RuntimeError(
            f"{run.label}: after {timeout_s:.0f} s only {readings} readings stored and"
            f" {counted} counted by the aggregates, of {expected}"
        )
    return {
        "stored": readings,
        "aggregated": int(counted),
        "wall_s": round(done - started, 2),
        "sustained_s": round(done - first_seen, 2),
    }


def run_pipeline(
    base: Settings, workers: int, count: int, sensors: int, logs: Path
) -> dict[str, Any]:
    run = Run(base, f"pipeline, {workers} worker(s)", sensors)
    try:
        records = payloads(run.sensor_ids, count, datetime.now(UTC) - timedelta(minutes=1))
        want = expected_alerts(run.plant, records)
        produce(run.kafka, records)
        env = {
            **os.environ,
            "IOTMON_KAFKA__TOPIC_PREFIX": run.kafka.topic_prefix,
            "IOTMON_DB__DB_SCHEMA": run.db.db_schema,
            # The stack's database login (its password file), although the state is elsewhere.
            "IOTMON_DB__URL": run.db.url,
            "IOTMON_INGEST__GROUP_ID": f"ingest-{run.id}",
            "IOTMON_INGEST__METRICS_PORT": "0",
            "IOTMON_WORKER__APP_ID": f"worker-{run.id}",
            "IOTMON_WORKER__METRICS_PORT": "0",
            "IOTMON_WORKER__SILENT_AFTER_S": "3600",
            # Every change of a running hour goes out (no pacing): the clock stops when the
            # aggregates count every reading, and a paced snapshot would add its interval.
            "IOTMON_WORKER__RUNNING_EVERY_S": "0",
            "IOTMON_SINK__GROUP_PREFIX": f"sink-{run.id}",
            "IOTMON_SINK__METRICS_PORT": "0",
            "IOTMON_STACK__STATE_DIR": str(logs / run.id),
            "IOTMON_LOG__LEVEL": "WARNING",
        }
        procs: list[subprocess.Popen[bytes]] = []
        logs.mkdir(parents=True, exist_ok=True)

        def start(name: str, *args: str, **extra: str) -> None:
            with (logs / f"{run.id}-{name}.log").open("ab") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "iotmon", *args],
                        env={**env, **extra},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )

        start("sink", "sink")
        for n in range(workers):
            start(f"worker{n}", "worker", IOTMON_WORKER__WEB_PORT=str(16066 + n))
        start("ingest", "ingest")
        try:
            result = wait_done(run, count, want["events"], 900, procs)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        # Checked: each alert event the readings decide stored once, and each alert.
        events = run.scalar("SELECT count(*) FROM alert_events")
        alerts = run.scalar("SELECT count(*) FROM alerts")
        result["alert_events"] = f"{events} of {want['events']}"
        result["alerts"] = f"{alerts} of {want['alerts']}"
        result["alerts_ok"] = events == want["events"] and alerts == want["alerts"]
        result["expected_transitions"] = {
            t.value: want[t.value] for t in AlertTransition if want[t.value]
        }
        return {"run": run.label, **result}
    finally:
        run.drop()


class PlainLoop:
    """Baseline (a)'s computation with the pipeline's own functions: validation, local
    hours, threshold status and hourly count/sum/max per sensor, written with COPY."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.directory = SensorDirectory(kafka)
        self.directory.load()
        threshold_view = ThresholdDirectory(kafka)
        threshold_view.load()
        self.thresholds = ThresholdIndex(threshold_view.thresholds())
        self.limits = Limits()
        # (sensor, hour start) -> loc, ymd, hour, then count/sum/max of each metric
        self.windows: dict[tuple[str, datetime], list[Any]] = {}
        self.touched: set[tuple[str, datetime]] = set()  # windows changed since the last write
        self.flagged = 0  # readings over a threshold

    def rows(self, msgs: list[KafkaMessage]) -> list[tuple[Any, ...]]:
        """A ``readings`` row per accepted reading of ``msgs``, each counted into its window."""
        now = datetime.now(UTC)
        rows = []
        for msg in msgs:
            raw_key = msg.key()
            for result, _ in validate_payload(
                msg.value(),
                key_sensor_id=raw_key.decode() if raw_key else None,
                lookup=self.directory.get,
                limits=self.limits,
                now=now,
                source="kafka",
                received_at=now,
            ):
                if isinstance(result, Accepted):
                    rows.append(self._count(result.reading))
        return rows

    def _count(self, r: Reading) -> tuple[Any, ...]:
        record = self.directory.get(r.sensor_id)
        location = record.location if record else None
        tz = location.timezone if location else self.limits.default_timezone
        hour_start, ymd, hh = local_hour(r.capture_dt, tz)
        statuses = [
            self.thresholds.evaluate(metric, getattr(r, metric), location).status
            for metric in METRICS
        ]
        self.flagged += any(st in (Status.WARNING, Status.CRITICAL) for st in statuses)
        key = (r.sensor_id, hour_start)
        w = self.windows.get(key)
        if w is None:
            w = self.windows[key] = [r.loc_id, ymd, hh] + [0, Decimal(0), None] * 3
        self.touched.add(key)
        for m, metric in enumerate(METRICS):
            value = getattr(r, metric)
            if value is None:
                continue
            at = 3 + 3 * m
            w[at] += 1
            w[at + 1] += value
            top = w[at + 2]
            w[at + 2] = value if top is None else max(top, value)
        return (
            r.sensor_id,
            r.capture_dt,
            r.loc_id,
            r.temperature,
            r.humidity,
            r.pcv_temperature,
            r.pcv_computed,
            r.source,
        )

    def write(self, conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
        """COPY ``rows`` and upsert the windows changed since the last write, in one
        transaction."""
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy(
                "COPY readings (sensor_id, capture_dt, loc_id, temperature, humidity,"
                " pcv_temperature, pcv_computed, source) FROM STDIN"
            ) as copy:
                for row in rows:
                    copy.write_row(row)
            cur.execute(
                "CREATE TEMP TABLE IF NOT EXISTS agg_in"
                " (LIKE hourly_aggregates INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            with cur.copy(_AGG_COPY) as copy:
                for key in self.touched:
                    copy.write_row((key[0], key[1], *self.windows[key]))
            cur.execute(_AGG_UPSERT)
        self.touched.clear()


def run_plain(base: Settings, count: int, sensors: int) -> dict[str, Any]:
    """Baseline (a): one process, one confluent consumer loop, the same computation."""
    run = Run(base, "baseline (a): plain consumer loop", sensors)
    try:
        produce(
            run.kafka, payloads(run.sensor_ids, count, datetime.now(UTC) - timedelta(minutes=1))
        )
        loop = PlainLoop(run.kafka)
        consumer = Consumer(
            {
                "bootstrap.servers": run.kafka.bootstrap_servers,
                "group.id": f"plain-{run.id}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([topic_name("readings_raw", run.kafka.topic_prefix)])
        stored = 0
        started = time.perf_counter()
        first_seen: float | None = None
        with psycopg.connect(run.db.url, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(run.db.db_schema)))
            while stored < count and time.perf_counter() - started < 900:
                msgs = consumer.consume(5000, 0.5)
                if not msgs:
                    continue
                rows = loop.rows(msgs)
                loop.write(conn, rows)
                consumer.commit(asynchronous=False)
                stored += len(rows)
                if first_seen is None:
                    first_seen = time.perf_counter()
        consumer.close()
        done = time.perf_counter()
        counted = run.scalar("SELECT coalesce(sum(temperature_count), 0) FROM hourly_aggregates")
        if stored < count or counted < count:
            raise RuntimeError(f"plain loop: stored {stored}, counted {counted} of {count}")
        return {
            "run": run.label,
            "stored": stored,
            "aggregated": int(counted),
            "wall_s": round(done - started, 2),
            "sustained_s": round(done - (first_seen or started), 2),
            "alert_events": "",
            "alerts": f"({loop.flagged} readings over a threshold; no alert lifecycle)",
        }
    finally:
        run.drop()


def run_batch_sql(base: Settings, count: int, sensors: int) -> dict[str, Any]:
    """Baseline (b): the original's way: load the raw table, then hourly batch SQL."""
    run = Run(base, "baseline (b): raw load + batch SQL", sensors)
    try:
        records = payloads(run.sensor_ids, count, datetime.now(UTC) - timedelta(minutes=1))
        with psycopg.connect(run.db.url) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(run.db.db_schema)))
            conn.execute(
                "CREATE TABLE raw_sensor_data (sensor_id text, capture_dt timestamptz,"
                " t1 numeric(6, 2), t2 numeric(6, 2), t3 numeric(6, 2))"
            )
            conn.commit()
            started = time.perf_counter()
            with conn.cursor() as cur, cur.copy("COPY raw_sensor_data FROM STDIN") as copy:
                for _, value in records:
                    doc = orjson.loads(value)
                    copy.write_row(
                        (
                            doc["sensor_id"],
                            doc["capture_dt"],
                            doc["temperature"],
                            doc["humidity"],
                            None,
                        )
                    )
            conn.commit()
            loaded = time.perf_counter()
            conn.execute(
                "INSERT INTO hourly_aggregates (sensor_id, hour_start, loc_id, ymd, hour,"
                " temperature_count, temperature_sum, temperature_min, temperature_max,"
                " humidity_count, humidity_sum, humidity_min, humidity_max, is_final)"
                " SELECT r.sensor_id, date_trunc('hour', r.capture_dt), s.loc_id,"
                " to_char(date_trunc('hour', r.capture_dt) AT TIME ZONE 'Asia/Seoul', 'YYYYMMDD'),"
                " to_char(date_trunc('hour', r.capture_dt) AT TIME ZONE 'Asia/Seoul', 'HH24'),"
                " count(r.t1), sum(r.t1), min(r.t1), max(r.t1),"
                " count(r.t2), sum(r.t2), min(r.t2), max(r.t2), true"
                " FROM raw_sensor_data r JOIN sensors s USING (sensor_id)"
                " GROUP BY 1, 2, 3"
            )
            conn.commit()
            done = time.perf_counter()
        counted = run.scalar("SELECT coalesce(sum(temperature_count), 0) FROM hourly_aggregates")
        if counted < count:
            raise RuntimeError(f"batch SQL counted {counted} of {count}")
        hours = run.scalar("SELECT count(DISTINCT hour_start) FROM hourly_aggregates")
        return {
            "run": run.label,
            "stored": count,
            "aggregated": int(counted),
            "wall_s": round(done - started, 2),
            "sustained_s": round(done - started, 2),
            "alert_events": "",
            "alerts": "none (the original never evaluated thresholds)",
            "load_s": round(loaded - started, 2),
            "batch_sql_s": round(done - loaded, 2),
            "hours_of_data": hours,
        }
    finally:
        run.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    base = Settings()
    logs = RESULTS / "logs"
    rows = [run_plain(base, args.readings, args.sensors)]
    print(rows[-1], flush=True)
    for w in args.workers:
        rows.append(run_pipeline(base, w, args.readings, args.sensors, logs))
        print(rows[-1], flush=True)
    rows.append(run_batch_sql(base, args.readings, args.sensors))
    print(rows[-1], flush=True)
    ceiling = args.readings / rows[0]["sustained_s"]
    for row in rows:
        rate = args.readings / row["sustained_s"]
        row["readings_per_s"] = round(rate)
        row["ratio_to_a"] = round(rate / ceiling, 2)
        row["zero_loss"] = (
            "yes"
            if row["stored"] >= args.readings
            and row["aggregated"] >= args.readings
            and row.get("alerts_ok", True)
            else "NO"
        )
    write_results(
        "throughput",
        rows,
        [
            "run",
            "readings_per_s",
            "ratio_to_a",
            "sustained_s",
            "wall_s",
            "stored",
            "aggregated",
            "zero_loss",
            "alert_events",
            "alerts",
        ],
        extra={
            "readings": args.readings,
            "sensors": args.sensors,
            "targets": {"readings_per_s": 20000, "ratio_to_a": 0.5},
        },
        plot=("run", "readings_per_s", "readings/s (higher is better)"),
    )


if __name__ == "__main__":
    main()
