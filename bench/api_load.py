"""API load: realtime and aggregation queries with 1,000 locations and a year of hourly rows.

    python -m bench.api_load [--locations 1000] [--days 365] [--duration 20] [--reuse]
                             [--name api_load]

Fills its own schema (``bench_api``) of the local PostgreSQL: every location has one sensor,
a latest status, and one hourly aggregate per hour for ``--days`` days (8.76 million rows by
default), written with one INSERT ... SELECT.  It then starts ``iotmon api`` as a separate
process and drives it with concurrent closed-loop clients for each scenario: ``hey`` when
it is installed, else httpx (asyncio).  The baseline in the same run is ``/health`` at the
same concurrency: the most this machine's HTTP stack answers with no database work at all.
On TimescaleDB the day and month scenarios run twice, from the hourly rows (the API with
``IOTMON_API__ROLLUPS=false``, the baseline) and from the daily and monthly rollups; the
``source`` column says which.  ``IOTMON_DB__URL`` picks the database (one without TimescaleDB
for the plain-PostgreSQL numbers) and ``--name`` the results file.

Clients ask for gzip, as browsers and HTTP libraries do.  ``hey`` reads the compressed bytes
without decompressing them: clients on other machines decompress on their own cores, and
here decompressing 1,000 locations' answers kept the load generator's core busy at about 900
answers a second, so the bench measured the client.  Each ``hey`` result says how busy the
load generator's core was (``client_cpu_pct``; near 100 %, the client was the limit).  The
httpx client decompresses every answer.

On a machine with two or more cores the load generator gets the last core to itself and the
API the others (``--no-pin`` shares them all), the way clients on other machines would leave
the server its cores; PostgreSQL is not pinned.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from bench.common import latency_summary, write_results
from iotmon.db import rollups
from iotmon.db.migrate import migrate
from iotmon.settings import Settings

FACTORIES = 4
BUILDINGS = 5
FLOORS = 5


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    clients: int
    target_p99_ms: float | None = None


def _connect(settings: Settings) -> psycopg.Connection[Any]:
    conn = psycopg.connect(settings.db.url, autocommit=True)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(settings.db.db_schema)))
    return conn


def fill(settings: Settings, locations: int, days: int, reuse: bool) -> dict[str, Any]:
    """Create and fill the schema (or keep it when ``reuse`` and it has the same size)."""
    schema = settings.db.db_schema
    hours = days * 24
    with psycopg.connect(settings.db.url, autocommit=True) as conn:
        if reuse:
            migrate(settings.db)  # a schema of an older version gets the newer migrations
            try:
                conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
                row = conn.execute(
                    "SELECT (SELECT count(*) FROM locations), (SELECT count(*) FROM"
                    " hourly_aggregates)"
                ).fetchone()
                if row == (locations, locations * hours):
                    print(f"reusing schema {schema}: {row[1]:,} hourly rows")
                    return {"fill_s": None, "hourly_rows": row[1]}
            except psycopg.Error:
                pass
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    migrate(settings.db)
    started = time.perf_counter()
    with _connect(settings) as conn:
        conn.execute(
            "INSERT INTO locations (loc_id, plant, factory, building, floor, area, timezone)"
            " SELECT format('L%%s', lpad(i::text, 4, '0')), 'P1', format('F%%s', i %% %s),"
            " format('B%%s', (i / %s) %% %s), (i / %s) %% %s + 1, format('area %%s', i %% 7),"
            " 'Asia/Seoul' FROM generate_series(0, %s - 1) i",
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
            " round((20 + random() * 15)::numeric, 2), round((40 + random() * 40)::numeric, 2),"
            " round((20 + random() * 14)::numeric, 2), 'normal', NULL, 'normal' FROM sensors s"
        )
        print(f"writing {locations * hours:,} hourly rows ...", flush=True)
        conn.execute(
            "INSERT INTO hourly_aggregates (sensor_id, hour_start, loc_id, ymd, hour,"
            " temperature_count, temperature_sum, temperature_min, temperature_max,"
            " humidity_count, humidity_sum, humidity_min, humidity_max,"
            " pcv_temperature_count, pcv_temperature_sum, pcv_temperature_min,"
            " pcv_temperature_max, is_final)"
            " SELECT s.sensor_id, h, s.loc_id, to_char(h AT TIME ZONE 'Asia/Seoul', 'YYYYMMDD'),"
            " to_char(h AT TIME ZONE 'Asia/Seoul', 'HH24'),"
            " 60, 60 * v.t, v.t - 1, v.t + 1.5, 60, 60 * v.rh, v.rh - 3, v.rh + 3,"
            " 60, 60 * v.p, v.p - 1, v.p + 1, true"
            " FROM sensors s CROSS JOIN generate_series("
            "   date_trunc('hour', now()) - make_interval(hours => %s), "
            "   date_trunc('hour', now()) - interval '1 hour', interval '1 hour') h"
            " CROSS JOIN LATERAL (SELECT"
            "   round((24 + 6 * sin(extract(epoch FROM h) / 43200.0))::numeric, 2) AS t,"
            "   round((60 + 15 * cos(extract(epoch FROM h) / 86400.0))::numeric, 2) AS rh,"
            "   round((25 + 6 * sin(extract(epoch FROM h) / 43200.0))::numeric, 2) AS p) v",
            (hours,),
        )
        # Written in bulk, not by the aggregates sink: the floor rollup is brought up to date
        # the way the sink does it, for every floor-hour.
        conn.execute(
            "SELECT refresh_floor_hourly(array_agg(factory), array_agg(building),"
            " array_agg(floor), array_agg(hour_start)) FROM (SELECT DISTINCT l.factory,"
            " l.building, l.floor, a.hour_start FROM hourly_aggregates a"
            " JOIN locations l USING (loc_id)) k"
        )
        # And the daily and monthly rollups (TimescaleDB), as `iotmon migrate` does for a
        # schema that holds rows.
        rollups.refresh(conn, patience_s=600.0)
        conn.execute("ANALYZE")
    fill_s = round(time.perf_counter() - started, 1)
    print(f"filled in {fill_s} s")
    return {"fill_s": fill_s, "hourly_rows": locations * hours}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Cores:
    """Which cores the API and the load generator run on (None: all of them)."""

    server: set[int] | None
    client: set[int] | None

    @staticmethod
    def split(pin: bool) -> Cores:
        available = sorted(os.sched_getaffinity(0))
        if not pin or len(available) < 2:
            return Cores(None, None)
        return Cores(set(available[:-1]), {available[-1]})

    def describe(self) -> str:
        if self.server is None or self.client is None:
            return "not pinned: load generator and API share every core"
        return f"API on cores {sorted(self.server)}, load generator on {sorted(self.client)}"


@contextmanager
def pinned(cores: set[int] | None) -> Iterator[None]:
    """Run the block (and the processes it starts, which inherit it) on ``cores``."""
    if cores is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def start_api(settings: Settings, port: int, rollups: bool = True) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "IOTMON_DB__URL": settings.db.url,
        "IOTMON_DB__DB_SCHEMA": settings.db.db_schema,
        "IOTMON_API__ROLLUPS": "true" if rollups else "false",
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


def hey_binary() -> str | None:
    """`hey` (a compiled HTTP load generator: ``go install github.com/rakyll/hey@v0.1.5``),
    which leaves the cores to the server far more than a Python client does."""
    found = shutil.which("hey")
    if found:
        return found
    home = Path.home() / "go" / "bin" / "hey"
    return str(home) if home.exists() else None


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def drive_hey(hey: str, base: str, scenario: Scenario, duration_s: float) -> dict[str, Any]:
    url = base + scenario.path
    httpx.get(url, timeout=60)  # warm up
    # An explicit Accept-Encoding turns off Go's transparent decompression: the answers are
    # read as they come over the wire, gzipped when the API gzips them.
    cpu_before = _children_cpu_s()
    out = subprocess.run(
        [
            *(hey, "-z", f"{duration_s}s", "-c", str(scenario.clients), "-t", "60", "-o", "csv"),
            *("-disable-compression", "-H", "Accept-Encoding: gzip", url),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    client_cpu_s = _children_cpu_s() - cpu_before
    latencies: list[float] = []
    errors = 0
    last_offset = 0.0
    for row in csv.DictReader(io.StringIO(out)):
        latencies.append(float(row["response-time"]))
        last_offset = max(last_offset, float(row["offset"]) + float(row["response-time"]))
        if row["status-code"] != "200":
            errors += 1
    answer = httpx.get(url, timeout=60)
    elapsed = last_offset or duration_s
    return _result(
        scenario,
        latencies,
        errors,
        elapsed,
        [len(answer.content)],
        wire_kb=round(int(answer.headers.get("content-length", len(answer.content))) / 1024, 1),
        client_cpu_pct=round(100 * client_cpu_s / elapsed, 1),
    )


def _result(
    scenario: Scenario,
    latencies: list[float],
    errors: int,
    elapsed: float,
    sizes: list[int],
    **extra: Any,
) -> dict[str, Any]:
    summary = latency_summary(latencies)
    target = scenario.target_p99_ms
    return {
        "scenario": scenario.name,
        "clients": scenario.clients,
        "requests": len(latencies),
        "errors": errors,
        "req_per_s": round(len(latencies) / elapsed, 1),
        **summary,
        "response_kb": round(sum(sizes) / max(1, len(sizes)) / 1024, 1),
        **extra,
        "target_p99_ms": target if target is not None else "",
        "meets_target": "" if target is None else ("yes" if summary["p99_ms"] <= target else "NO"),
    }


async def drive(base: str, scenario: Scenario, duration_s: float) -> dict[str, Any]:
    """``clients`` closed-loop clients request ``path`` for ``duration_s`` seconds."""
    latencies: list[float] = []
    errors = 0
    sizes: list[int] = []
    deadline = time.perf_counter() + duration_s
    limits = httpx.Limits(max_connections=scenario.clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        await client.get(scenario.path)  # warm up (first rendering, connection)

        async def one_client() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                r = await client.get(scenario.path)
                latencies.append(time.perf_counter() - started)
                if r.status_code != 200:
                    errors += 1
                elif len(sizes) < 5:
                    sizes.append(len(r.content))

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(scenario.clients)))
        elapsed = time.perf_counter() - started
    return _result(scenario, latencies, errors, elapsed, sizes)


def scenarios(month: str, quarter: str, clients: int) -> list[Scenario]:
    first, last = f"{month}01", f"{month}28"
    year = month[:4]
    return [
        Scenario("baseline: /health (no database)", "/health", clients),
        Scenario("realtime, all 1,000 locations", "/api/v1/realtime/", clients, 50.0),
        Scenario("realtime, one factory", "/api/v1/realtime/factory/F1", clients, 50.0),
        Scenario(
            "aggregation, one factory, 28 days hourly",
            f"/api/v1/aggregation/temperature/factory/F1?start_date={first}&end_date={last}",
            1,
            300.0,
        ),
        Scenario(
            "aggregation, one factory, 28 days hourly, 10 clients",
            f"/api/v1/aggregation/temperature/factory/F1?start_date={first}&end_date={last}",
            10,
        ),
        Scenario(
            "aggregation, one location, a year monthly",
            f"/api/v1/aggregation/pcv_temperature/location/L0001?start_date={month[:4]}"
            f"&end_date={month[:4]}",
            clients,
        ),
        Scenario(
            "aggregation, one location, one day hourly",
            f"/api/v1/aggregation/humidity/location/L0002?start_date={first}&end_date={first}",
            clients,
        ),
        # Day and month buckets over large ranges: what the daily and monthly rollups are for.
        Scenario(
            "aggregation, one factory, a year monthly",
            f"/api/v1/aggregation/temperature/factory/F2?start_date={year}&end_date={year}",
            clients,
        ),
        Scenario(
            "aggregation, one factory, three months daily",
            f"/api/v1/aggregation/temperature/factory/F3?start_date={quarter}&end_date={month}",
            clients,
        ),
        Scenario(
            "aggregation, all 1,000 locations, a year monthly",
            f"/api/v1/aggregation/humidity/?start_date={year}&end_date={year}",
            1,
        ),
        Scenario(
            "aggregation, all 1,000 locations, a month daily",
            f"/api/v1/aggregation/humidity/?start_date={month}&end_date={month}",
            1,
        ),
    ]


def refresh_cost(settings: Settings, repeats: int = 5) -> dict[str, float]:
    """What the aggregates sink's refresh after a batch with an earlier day costs (median
    ms), the way the sink writes: one sensor's hour rewritten (with the same values, which
    invalidates the buckets as any write does) and its floor-hour recomputed, then the
    refresh; for an hour of yesterday, of the previous month (its monthly buckets are
    materialized too), and with nothing changed."""
    out: dict[str, float] = {}
    with _connect(settings) as conn:
        for label, at in (
            ("yesterday", "date_trunc('day', now(), 'UTC') - interval '12 hours'"),
            (
                "previous_month",
                "date_trunc('month', now(), 'UTC') - interval '20 days' + interval '5 hours'",
            ),
        ):
            row = conn.execute(
                sql.SQL(
                    "SELECT sensor_id, loc_id, hour_start FROM hourly_aggregates"
                    " WHERE hour_start = {} ORDER BY sensor_id LIMIT 1"
                ).format(sql.SQL(at))
            ).fetchone()
            assert row is not None, f"no hour of {label}"
            sensor, loc, hour = row
            changed: list[float] = []
            unchanged: list[float] = []
            for _ in range(repeats):
                conn.execute(
                    "UPDATE hourly_aggregates SET updated_at = updated_at"
                    " WHERE sensor_id = %s AND hour_start = %s",
                    (sensor, hour),
                )
                conn.execute(
                    "SELECT refresh_floor_hourly_for(ARRAY[%s], ARRAY[%s]::timestamptz[])",
                    (loc, hour),
                )
                started = time.perf_counter()
                rollups.refresh(conn, hour, hour)
                changed.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                rollups.refresh(conn, hour, hour)
                unchanged.append((time.perf_counter() - started) * 1000)
            out[f"sink_refresh_{label}_ms"] = round(statistics.median(changed), 1)
            out[f"sink_refresh_{label}_nothing_changed_ms"] = round(statistics.median(unchanged), 1)
    return out


def storage(settings: Settings) -> tuple[str, bool]:
    """What the schema is stored on, and whether it has the daily and monthly rollups."""
    with _connect(settings) as conn:
        row = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone()
        views = conn.execute(
            "SELECT count(*) FROM pg_views WHERE schemaname = current_schema()"
            " AND viewname IN ('loc_daily', 'loc_monthly', 'floor_daily', 'floor_monthly')"
        ).fetchone()
        version = conn.execute("SHOW server_version").fetchone()
    server = f"PostgreSQL {version[0] if version else '?'}"
    name = f"TimescaleDB {row[0]} on {server}" if row else f"{server} (no TimescaleDB)"
    return name, bool(views and views[0] == 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--locations", type=int, default=1000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per scenario")
    parser.add_argument("--schema", default="bench_api")
    parser.add_argument("--reuse", action="store_true", help="keep a filled schema of this size")
    parser.add_argument(
        "--python-client", action="store_true", help="drive the load with httpx even if hey exists"
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="let the load generator share the API's cores"
    )
    parser.add_argument("--name", default="api_load", help="results file name under bench/results/")
    args = parser.parse_args()
    cores = Cores.split(not args.no_pin)

    base_settings = Settings()
    settings = base_settings.model_copy(
        update={"db": base_settings.db.model_copy(update={"db_schema": args.schema})}
    )
    data = fill(settings, args.locations, args.days, args.reuse)
    # A full month that lies inside the data: the month before last.
    with _connect(settings) as conn:
        row = conn.execute(
            "SELECT to_char(date_trunc('month', now() - interval '1 month')"
            " - interval '1 day', 'YYYYMM')"
        ).fetchone()
        quarter_row = conn.execute(
            "SELECT to_char(date_trunc('month', now() - interval '3 months')"
            " - interval '1 day', 'YYYYMM')"
        ).fetchone()
    assert row is not None and quarter_row is not None
    month, quarter = row[0], quarter_row[0]
    stored_on, has_rollups = storage(settings)
    print(f"storage: {stored_on}; rollups: {'yes' if has_rollups else 'no'}")
    hey = None if args.python_client else hey_binary()
    print(f"load generator: {hey or 'python httpx client'}; {cores.describe()}")
    rows = []
    # The baseline of the day and month buckets in the same run: the hourly rows (and the
    # floor rollup), then the daily and monthly rollups when the schema has them.
    for from_rollups in (False, True) if has_rollups else (False,):
        port = _free_port()
        with pinned(cores.server):
            api = start_api(settings, port, from_rollups)
        try:
            for scenario in scenarios(month, quarter, args.clients):
                aggregation = "monthly" in scenario.name or "daily" in scenario.name
                if from_rollups and not aggregation:
                    continue
                base = f"http://127.0.0.1:{port}"
                with pinned(cores.client):
                    if hey:
                        result = drive_hey(hey, base, scenario, args.duration)
                    else:
                        result = asyncio.run(drive(base, scenario, args.duration))
                result["source"] = (
                    "rollups" if from_rollups else "hourly rows" if aggregation else ""
                )
                print(result, flush=True)
                rows.append(result)
        finally:
            api.terminate()
            api.wait(20)
    refresh = refresh_cost(settings) if has_rollups else {}
    if refresh:
        print(f"rollup refresh after a batch with an earlier day: {refresh}")
    write_results(
        args.name,
        rows,
        [
            "scenario",
            "source",
            "clients",
            "req_per_s",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "max_ms",
            "errors",
            "response_kb",
            "wire_kb",
            "client_cpu_pct",
            "target_p99_ms",
            "meets_target",
        ],
        extra={
            "locations": args.locations,
            "days": args.days,
            "duration_s_per_scenario": args.duration,
            "load_generator": "hey" if hey else "python httpx",
            "cores": cores.describe(),
            "storage": stored_on,
            **refresh,
            **data,
        },
        plot=("scenario", "p99_ms", "p99 latency (ms)"),
    )


if __name__ == "__main__":
    main()
