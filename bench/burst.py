"""Drill: a 10x burst for 60 s. Memory stays bounded, the lag drains afterwards, and nothing
is lost.

    python -m bench.burst [--rate 200] [--factor 10] [--burst-s 60] [--sensors 1000]

Gateways (a Kafka producer on the raw topic, paced) send ``--rate`` readings/s for 20 s, then
``factor`` times that for ``--burst-s`` seconds, then ``--rate`` again. Ingest, worker and
sink run as processes on a fresh topic prefix and schema. Every second the script records:
- the resident memory (VmRSS) of each process;
- the readings stored in PostgreSQL;
- the backlog (readings sent minus readings stored).

It checks three things. Every reading is stored and counted by the hourly aggregates. After
the burst the backlog drains to zero.
The peak memory of each process stays within ``--max-growth`` times its memory before the
burst. The baseline in the same run is the steady phase before the burst.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.common import RESULTS, write_results
from bench.throughput import Run
from iotmon.settings import Settings
from producers.kafka import make_producer
from schemas.topics import topic_name


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Gateways(threading.Thread):
    """Paced producer: ``schedule`` is a list of (seconds, readings per second)."""

    def __init__(self, run: Run, schedule: list[tuple[float, float]]) -> None:
        super().__init__(daemon=True)
        self.run_ = run
        self.schedule = schedule
        self.sent = 0
        self.phase = "steady"

    def run(self) -> None:
        producer = make_producer(self.run_.kafka)
        topic = topic_name("readings_raw", self.run_.kafka.topic_prefix)
        sensors = self.run_.sensor_ids
        for n, (seconds, rate) in enumerate(self.schedule):
            self.phase = ("steady", "burst", "after")[min(n, 2)]
            started = time.perf_counter()
            k = 0
            while (elapsed := time.perf_counter() - started) < seconds:
                due = int(elapsed * rate)
                while k < due:
                    sensor = sensors[self.sent % len(sensors)]
                    body = {
                        "sensor_id": sensor,
                        "capture_dt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                        "temperature": 24.0 + (self.sent % 50) / 10,
                        "humidity": 55.0,
                    }
                    while True:
                        try:
                            producer.produce(topic, key=sensor.encode(), value=orjson.dumps(body))
                            break
                        except BufferError:
                            producer.poll(0.01)
                    self.sent += 1
                    k += 1
                producer.poll(0)
                time.sleep(0.005)
        if producer.flush(60):
            raise RuntimeError("readings were not confirmed by Kafka")
        self.phase = "done"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--factor", type=float, default=10.0)
    parser.add_argument("--burst-s", type=float, default=60.0)
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--max-growth", type=float, default=3.0)
    args = parser.parse_args()

    run = Run(Settings(), "burst", args.sensors)
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "IOTMON_KAFKA__TOPIC_PREFIX": run.kafka.topic_prefix,
        "IOTMON_DB__DB_SCHEMA": run.db.db_schema,
        # The stack's database login (its password file), although the state is elsewhere.
        "IOTMON_DB__URL": run.db.url,
        "IOTMON_INGEST__GROUP_ID": f"ingest-{run.id}",
        "IOTMON_WORKER__APP_ID": f"worker-{run.id}",
        "IOTMON_WORKER__SILENT_AFTER_S": "3600",
        # Every change of a running hour goes out (no pacing): the clock stops when the
        # aggregates count every reading, and a paced snapshot would add its interval.
        "IOTMON_WORKER__RUNNING_EVERY_S": "0",
        "IOTMON_SINK__GROUP_PREFIX": f"sink-{run.id}",
        "IOTMON_STACK__STATE_DIR": str(logs / run.id),
        "IOTMON_LOG__LEVEL": "WARNING",
        **{f"IOTMON_{s}__METRICS_PORT": "0" for s in ("INGEST", "WORKER", "SINK")},
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    samples: list[dict[str, Any]] = []
    try:
        for name in ("sink", "worker", "ingest"):
            with (logs / f"burst-{run.id}-{name}.log").open("ab") as out:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "iotmon", name],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
        time.sleep(8)  # the worker joins its group
        gateways = Gateways(
            run,
            [(20.0, args.rate), (args.burst_s, args.rate * args.factor), (20.0, args.rate)],
        )
        started = time.perf_counter()
        gateways.start()
        drained_at: float | None = None
        while time.perf_counter() - started < 600:
            time.sleep(1.0)
            stored = run.scalar("SELECT count(*) FROM readings")
            counted = run.scalar(
                "SELECT coalesce(sum(temperature_count), 0) FROM hourly_aggregates"
            )
            sample = {
                "t": round(time.perf_counter() - started, 1),
                "phase": gateways.phase,
                "sent": gateways.sent,
                "stored": stored,
                "aggregated": int(counted),
                # what the slower of the two paths (readings sink; worker + aggregates sink)
                # still has to do
                "backlog": gateways.sent - min(stored, int(counted)),
                **{f"{n}_rss_mib": round(rss_mib(p.pid), 1) for n, p in procs.items()},
            }
            samples.append(sample)
            for name, p in procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited during the burst")
            if gateways.phase == "done" and min(stored, int(counted)) >= gateways.sent:
                drained_at = time.perf_counter() - started
                break
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        run.drop()
    steady = [s for s in samples if s["phase"] == "steady"]
    rows = []
    for name in procs:
        before = max(s[f"{name}_rss_mib"] for s in steady) if steady else 0.0
        peak = max(s[f"{name}_rss_mib"] for s in samples)
        rows.append(
            {
                "process": name,
                "steady_rss_mib": before,
                "peak_rss_mib": peak,
                "growth": round(peak / before, 2) if before else "",
                "bounded": "yes" if before and peak <= before * args.max_growth else "NO",
            }
        )
    burst_end = 20.0 + args.burst_s
    write_results(
        "burst",
        rows,
        ["process", "steady_rss_mib", "peak_rss_mib", "growth", "bounded"],
        extra={
            "rate": args.rate,
            "factor": args.factor,
            "burst_s": args.burst_s,
            "sent": gateways.sent,
            "stored": samples[-1]["stored"] if samples else 0,
            "aggregated": samples[-1]["aggregated"] if samples else 0,
            "zero_loss": bool(samples)
            and samples[-1]["stored"] == samples[-1]["aggregated"] == gateways.sent,
            "max_backlog": max(s["backlog"] for s in samples) if samples else None,
            "drained_s_after_burst": (
                round(drained_at - burst_end, 1) if drained_at is not None else None
            ),
            "samples": samples,
        },
        plot=("process", "peak_rss_mib", "peak resident memory during the burst (MiB)"),
    )
    print(
        f"sent {gateways.sent}, stored {samples[-1]['stored'] if samples else 0},"
        f" aggregated {samples[-1]['aggregated'] if samples else 0}, max backlog"
        f" {max(s['backlog'] for s in samples) if samples else None},"
        f" drained {'yes' if drained_at is not None else 'NO'}"
    )


if __name__ == "__main__":
    main()
