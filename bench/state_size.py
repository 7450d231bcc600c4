"""What the worker writes per reading as an hour fills: sensor state (changelog) bytes and
the time to serialise them, with the capture instants sealed into chunks against the old
way, every instant in the state, over the same readings in the same run.

    python -m bench.state_size [--sensors 100] [--every-s 1]

The readings go through the worker's own engine (no Kafka: this measures what the worker
serialises and sends, not the broker), in records of 20 readings as at a few thousand
readings per second, one reading per sensor every ``--every-s`` seconds for an hour, in
capture order with 3% duplicates. After each record the touched sensor states are
serialised as the worker does (``model_dump_json``), and the chunks sealed by it.
The numbers are per reading, per ten minutes of the hour: a state written per record
grows with the instants it holds, so the last minutes show what a fresh-state benchmark
does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from bench.common import write_results
from schemas.master import Location
from schemas.readings import Reading
from stream_apps.processing.engine import (
    Context,
    PartitionState,
    SensorState,
    apply_batch,
    chunk_key,
)
from stream_apps.processing.rules import ThresholdIndex
from stream_apps.processing.windows import SEAL_AT, WindowPolicy

HOUR_START = datetime(2026, 12, 1, 0, tzinfo=UTC)
SEGMENT_S = 600


def readings(sensors: int, every_s: float) -> list[tuple[int, Reading]]:
    """(segment of the hour, reading) in delivery order: capture order, 3% twice."""
    rng = random.Random(7)
    out: list[tuple[float, Reading]] = []
    ids = [f"SinPyeong-MX-1-F1-T{i:04d}" for i in range(sensors)]
    steps = int(3600 / every_s)
    for step in range(steps):
        for sid in ids:
            at = HOUR_START + timedelta(seconds=step * every_s, milliseconds=rng.randint(0, 999))
            if at >= HOUR_START + timedelta(hours=1):
                continue
            reading = Reading(
                sensor_id=sid,
                loc_id=sid[:-6],
                capture_dt=at,
                temperature=Decimal(rng.randint(200, 330)) / 10,
                humidity=Decimal(rng.randint(300, 800)) / 10,
                pcv_temperature=Decimal(rng.randint(200, 340)) / 10,
                source="mqtt",
                received_at=at,
            )
            out.append((at.timestamp(), reading))
            if rng.random() < 0.03:
                out.append((at.timestamp() + rng.uniform(1, 30), reading))
    out.sort(key=lambda p: p[0])
    return [(int((r.capture_dt - HOUR_START).total_seconds()) // SEGMENT_S, r) for _, r in out]


def run(feed: list[tuple[int, Reading]], seal: bool) -> dict[int, dict[str, float]]:
    """Per segment: readings, state and chunk bytes, serialising seconds."""
    chunks: dict[bytes, frozenset[int]] = {}

    def lookup(sid: str, hour_start: datetime, index: int) -> frozenset[int]:
        return chunks[chunk_key(sid, hour_start, index)]

    policy = WindowPolicy(grace=timedelta(minutes=10))
    location = Location(loc_id="SinPyeong-MX-1-F1", factory="SinPyeong")
    ctx = Context(
        policy=policy,
        thresholds=ThresholdIndex([]),
        location=lambda sid: location,
        silent_after=timedelta(minutes=5),
        idle_after=timedelta(seconds=30),
        outbox_keep=timedelta(minutes=10),
        now=HOUR_START,
        seen_chunk=lookup,
        seal_at=SEAL_AT if seal else 10**9,  # the old way: no instant is ever sealed
    )
    partition = PartitionState()
    states: dict[str, SensorState] = {}
    per: dict[int, dict[str, float]] = {}
    for offset, start in enumerate(range(0, len(feed), 20)):
        record = feed[start : start + 20]
        segment = record[-1][0]
        batch = [r for _, r in record]
        now = batch[-1].capture_dt
        step = dataclasses.replace(ctx, now=now, replay_from=offset)
        out = apply_batch(partition, states, batch, offset, now, step)
        begun = time.perf_counter()
        written = sum(
            len(states[sid].model_dump_json().encode()) for sid in {r.sensor_id for r in batch}
        )
        sealed = [c.model_dump_json().encode() for c in out.chunks]
        spent = time.perf_counter() - begun
        for chunk in out.chunks:
            if chunk.ms is not None:
                chunks[chunk.key] = chunk.ms
        row = per.setdefault(segment, {"readings": 0, "state": 0, "chunks": 0, "s": 0.0})
        row["readings"] += len(batch)
        row["state"] += written
        row["chunks"] += sum(len(c) for c in sealed)
        row["s"] += spent
    return per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=100)
    parser.add_argument("--every-s", type=float, default=1.0)
    args = parser.parse_args()
    feed = readings(args.sensors, args.every_s)
    print(f"{len(feed):,} readings: {args.sensors} sensors, one every {args.every_s:g} s")
    baseline = run(feed, seal=False)
    sealed = run(feed, seal=True)
    rows: list[dict[str, Any]] = []
    for name, per in (("baseline: every instant in the state", baseline), ("chunks", sealed)):
        for segment, row in sorted(per.items()):
            n = row["readings"]
            rows.append(
                {
                    "way": name,
                    "minutes": f"{segment * 10}-{segment * 10 + 10}",
                    "bytes_per_reading": round((row["state"] + row["chunks"]) / n),
                    "serialise_us_per_reading": round(row["s"] / n * 1e6, 1),
                }
            )
    last = max(sealed)
    ratio = (baseline[last]["state"] + baseline[last]["chunks"]) / (
        sealed[last]["state"] + sealed[last]["chunks"]
    )
    for done in rows:
        way = "chunks" if done["way"] == "chunks" else "baseline"
        done["label"] = f"{way} {done['minutes']}"
    write_results(
        "state_size",
        rows,
        ["way", "minutes", "bytes_per_reading", "serialise_us_per_reading"],
        extra={
            "sensors": args.sensors,
            "every_s": args.every_s,
            "readings": len(feed),
            "seal_at": SEAL_AT,
            "last_ten_minutes_bytes_ratio": round(ratio, 1),
        },
        plot=("label", "bytes_per_reading", "bytes written per reading (lower is better)"),
    )
    print(f"last ten minutes: the baseline writes {ratio:.1f}x the bytes per reading")


if __name__ == "__main__":
    main()
