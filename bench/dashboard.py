"""Dashboard page-load budget, measured in the browser: the first render of a 1,000-location
board, and how long a live update takes to paint.

    python -m bench.dashboard [--locations 1000] [--loads 5] [--updates 30]
                              [--schema bench_dashboard] [--name dashboard]

Fills its own schema (``bench_dashboard``) with ``--locations`` locations, one sensor and a
latest reading each, and uses its own topics (prefix ``bench.dashboard.``, deleted at the
end).  It starts ``iotmon api`` as a separate process and drives headless Chromium (the
system's ``chromium``) with Playwright:

* **first render**: ``--loads`` fresh page loads of ``/`` (no cache); for each, the time
  from navigation start to the board's tiles being built (the page's ``board-rendered``
  mark, after the locations, the realtime answer and the active alerts have arrived) and
  to the first paint after it (the next animation frame), from the browser's own clock;
* **live update**: ``--updates`` times, a new latest status of a random sensor is produced
  to the latest topic (what the worker does for every reading), and the page records when
  that sensor's tile showed the new value and the frame after it was painted; the
  latency is from just before the produce call to that paint (one machine, one clock).
  It covers Kafka, the API's live stream and the page, not the stages before the latest
  topic (their latency is in ``bench.latency``);
* **alert event**: with ``--alerts`` active alerts already on the board, ``--updates``
  times an alert is raised (produced to the alerts topic) at a location that had none, and
  the page records when that tile's badge was painted.  The live update above is its
  baseline: an alert event repaints the tiles it names, so it should cost no more than a
  reading does, however many locations and alerts the board holds.

The numbers go to ``bench/results/<name>.{json,md}`` and docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import uuid4

import httpx
import psycopg
from playwright.sync_api import Page, sync_playwright
from psycopg import sql

from bench.common import latency_summary, write_results
from iotmon.db.migrate import migrate
from iotmon.settings import Settings
from iotmon.topics import delete_prefixed_topics, ensure_topics
from producers.kafka import make_producer
from schemas.alerts import AlertEvent, AlertKind, AlertTransition
from schemas.common import Status
from schemas.readings import SensorStatus
from schemas.topics import topic_name
from stream_apps.sinks.alerts import AlertsWriter

FACTORIES = 4
BUILDINGS = 5
FLOORS = 5

# Runs in the page: watches a tile's temperature cell and sets ``window.benchResult`` to
# [epoch ms when it showed the text, epoch ms of the frame after it].
WATCH = """
([loc, text]) => {
  window.benchResult = null;
  const cell = document.querySelector(`.tile[data-loc="${loc}"] dd[data-metric="temperature"]`);
  const now = () => performance.timeOrigin + performance.now();
  const observer = new MutationObserver(() => {
    if (cell.textContent === text) {
      observer.disconnect();
      const shown = now();
      requestAnimationFrame(() => setTimeout(() => { window.benchResult = [shown, now()]; }, 0));
    }
  });
  observer.observe(cell, { childList: true, characterData: true, subtree: true });
}
"""


# Runs in the page: sets ``window.benchResult`` once the tile of ``loc`` shows an alert
# badge, like WATCH.
WATCH_ALERT = """
(loc) => {
  window.benchResult = null;
  const badge = document.querySelector(`.tile[data-loc="${loc}"] .tile-alert`);
  const now = () => performance.timeOrigin + performance.now();
  const observer = new MutationObserver(() => {
    if (!badge.hidden) {
      observer.disconnect();
      const shown = now();
      requestAnimationFrame(() => setTimeout(() => { window.benchResult = [shown, now()]; }, 0));
    }
  });
  observer.observe(badge, {
    attributes: true, childList: true, characterData: true, subtree: true,
  });
}
"""


def raised(loc: str, value: Decimal) -> AlertEvent:
    at = datetime.now(UTC)
    return AlertEvent(
        event_id=uuid4(),
        alert_id=uuid4(),
        kind=AlertKind.THRESHOLD,
        transition=AlertTransition.RAISED,
        sensor_id=f"TEMPIOT-{loc}",
        loc_id=loc,
        metric="temperature",
        level=Status.WARNING,
        measured_value=value,
        threshold_id=1,
        threshold_level="yellow",
        threshold_min=Decimal("31.00"),
        threshold_max=Decimal("32.90"),
        reading_time=at,
        decided_at=at,
        message=f"temperature {value}",
    )


def fill(settings: Settings, locations: int, alerts: int) -> None:
    """A fresh schema with ``locations`` locations, one sensor and one latest reading each,
    and ``alerts`` active alerts at the first locations."""
    with psycopg.connect(settings.db.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(settings.db.db_schema)
            )
        )
    migrate(settings.db)
    with psycopg.connect(settings.db.url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(settings.db.db_schema)))
        conn.execute(
            "INSERT INTO locations (loc_id, plant, factory, building, floor, area,"
            " location_name, timezone)"
            " SELECT format('L%%s', lpad(i::text, 4, '0')), 'P1', format('F%%s', i %% %s),"
            " format('B%%s', (i / %s) %% %s), (i / %s) %% %s + 1, format('area %%s', i %% 7),"
            " format('Line %%s', i), 'Asia/Seoul' FROM generate_series(0, %s - 1) i",
            (FACTORIES, FACTORIES, BUILDINGS, FACTORIES * BUILDINGS, FLOORS, locations),
        )
        conn.execute(
            "INSERT INTO sensors (sensor_id, loc_id) SELECT format('TEMPIOT-L%%s',"
            " lpad(i::text, 4, '0')), format('L%%s', lpad(i::text, 4, '0'))"
            " FROM generate_series(0, %s - 1) i",
            (locations,),
        )
        conn.execute(
            "INSERT INTO latest_readings (sensor_id, loc_id, capture_dt, temperature, humidity,"
            " pcv_temperature, temperature_status, humidity_status, pcv_temperature_status)"
            " SELECT s.sensor_id, s.loc_id, now() - random() * interval '20 seconds',"
            " round((20 + random() * 15)::numeric, 1), round((40 + random() * 40)::numeric, 1),"
            " round((20 + random() * 14)::numeric, 1),"
            " (ARRAY['normal', 'normal', 'normal', 'warning', 'critical'])"
            "[1 + (random() * 4)::int],"
            " NULL, 'normal' FROM sensors s"
        )
        AlertsWriter().write(
            conn, [raised(f"L{i % locations:04d}", Decimal("31.50")) for i in range(alerts)]
        )
        conn.execute("ANALYZE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_api(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "IOTMON_DB__URL": settings.db.url,
        "IOTMON_DB__DB_SCHEMA": settings.db.db_schema,
        "IOTMON_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "IOTMON_API__PORT": str(port),
        "IOTMON_LOG__LEVEL": "WARNING",
    }
    proc = subprocess.Popen([sys.executable, "-m", "iotmon", "api"], env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the API did not start")


def first_render(page: Page, base: str, locations: int) -> dict[str, float]:
    """One cold load of the board, in ms from navigation start: the answers arrived
    (locations, realtime, active alerts), the tiles built, the frame after them painted,
    and the live streams open (they open alongside; the values are then asked for again)."""
    page.goto("about:blank")
    page.goto(base + "/")
    page.wait_for_function(
        "n => document.querySelectorAll('.tile').length === n", arg=locations, timeout=60_000
    )
    marks: dict[str, float] = page.evaluate(
        """() => new Promise((resolve) => requestAnimationFrame(() => setTimeout(() => {
            const at = (name) => performance.getEntriesByName(name)[0].startTime;
            resolve({data: at('data-loaded'), rendered: at('board-rendered'),
                     painted: performance.now()});
        }, 0)))"""
    )
    page.wait_for_function("() => performance.getEntriesByName('live-open').length > 0")
    marks["live"] = page.evaluate("() => performance.getEntriesByName('live-open')[0].startTime")
    return marks


def live_update(page: Page, producer: Any, topic: str, sensor: str, loc: str, n: int) -> float:
    """Seconds from producing a new status of ``sensor`` to its tile painted with it."""
    value = Decimal(f"{40 + n % 50}.{n % 10}")
    page.evaluate(WATCH, [loc, f"{value} °C"])
    now = datetime.now(UTC)
    status = SensorStatus(
        sensor_id=sensor,
        loc_id=loc,
        capture_dt=now,
        temperature=value,
        humidity=Decimal("55.0"),
        pcv_temperature=Decimal("30.0"),
        pcv_computed=False,
        temperature_status=Status.NORMAL,
        humidity_status=None,
        pcv_temperature_status=Status.NORMAL,
        updated_at=now,
    )
    sent = time.time() * 1000
    producer.produce(topic, key=sensor.encode(), value=status.model_dump_json().encode())
    producer.flush(10)
    page.wait_for_function("() => window.benchResult !== null", timeout=30_000)
    _shown, painted = page.evaluate("() => window.benchResult")
    return (float(painted) - sent) / 1000


def alert_paint(page: Page, producer: Any, topic: str, loc: str, n: int) -> float:
    """Seconds from producing an alert raised at ``loc`` to its tile's badge painted."""
    page.evaluate(WATCH_ALERT, loc)
    event = raised(loc, Decimal(f"{31 + n % 2}.{n % 10}0"))
    sent = time.time() * 1000
    producer.produce(topic, key=event.sensor_id.encode(), value=event.model_dump_json().encode())
    producer.flush(10)
    page.wait_for_function("() => window.benchResult !== null", timeout=30_000)
    _shown, painted = page.evaluate("() => window.benchResult")
    return (float(painted) - sent) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--locations", type=int, default=1000)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--alerts", type=int, default=500, help="active alerts on the board")
    parser.add_argument("--schema", default="bench_dashboard")
    parser.add_argument("--name", default="dashboard", help="results file under bench/results/")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (make system-deps)")

    base_settings = Settings()
    settings = base_settings.model_copy(
        update={
            "db": base_settings.db.model_copy(update={"db_schema": args.schema}),
            "kafka": base_settings.kafka.model_copy(update={"topic_prefix": "bench.dashboard."}),
        }
    )
    ensure_topics(settings.kafka)
    if not 0 <= args.alerts < args.locations:
        parser.error("--alerts must be less than --locations (alerts go to locations with none)")
    fill(settings, args.locations, args.alerts)
    port = _free_port()
    api = start_api(settings, port)
    base = f"http://127.0.0.1:{port}"
    rows: list[dict[str, Any]] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
            page = context.new_page()
            loads = [first_render(page, base, args.locations) for _ in range(args.loads)]
            for key, what in (
                ("data", "first render: answers arrived"),
                ("rendered", "first render: tiles built"),
                ("painted", "first render: painted"),
                ("live", "live streams open"),
            ):
                values = sorted(m[key] for m in loads)
                rows.append(
                    {
                        "measure": what,
                        "runs": len(values),
                        "median_ms": round(statistics.median(values), 1),
                        "max_ms": round(values[-1], 1),
                    }
                )
            page.wait_for_function("() => document.getElementById('live').textContent === 'Live'")
            producer = make_producer(settings.kafka)
            topic = topic_name("latest", settings.kafka.topic_prefix)
            rng = random.Random(7)
            latencies = []
            for n in range(args.updates):
                i = rng.randrange(args.locations)
                latencies.append(
                    live_update(page, producer, topic, f"TEMPIOT-L{i:04d}", f"L{i:04d}", n)
                )
            summary = latency_summary(latencies)
            rows.append(
                {
                    "measure": "live update: produced to painted",
                    "runs": len(latencies),
                    "median_ms": summary["p50_ms"],
                    "p95_ms": summary["p95_ms"],
                    "max_ms": summary["max_ms"],
                }
            )
            # Raised where no alert is yet: every event adds a badge.
            alerts_topic = topic_name("alerts", settings.kafka.topic_prefix)
            free = rng.sample(range(args.alerts, args.locations), args.updates)
            alert_latencies = [
                alert_paint(page, producer, alerts_topic, f"L{i:04d}", n)
                for n, i in enumerate(free)
            ]
            summary = latency_summary(alert_latencies)
            rows.append(
                {
                    "measure": f"alert event ({args.alerts} active): produced to painted",
                    "runs": len(alert_latencies),
                    "median_ms": summary["p50_ms"],
                    "p95_ms": summary["p95_ms"],
                    "max_ms": summary["max_ms"],
                }
            )
            browser.close()
    finally:
        api.terminate()
        api.wait(20)
        delete_prefixed_topics(settings.kafka)
    write_results(
        args.name,
        rows,
        ["measure", "runs", "median_ms", "p95_ms", "max_ms"],
        extra={"locations": args.locations, "alerts": args.alerts, "browser": chromium},
    )


if __name__ == "__main__":
    main()
