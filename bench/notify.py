"""Alert delivery: how fast ``iotmon notifier`` routes and delivers alert events, and what
it adds to the time from a gateway's reading to the webhook that tells someone about it.

    python -m bench.notify [--events 2000] [--subscriptions 5] [--alerts 200]
                           [--sensors 20] [--every-s 0.05] [--only delivery|latency]

Both parts run on the local stack, each on a fresh topic prefix and database schema, with a
webhook receiver of the bench's own (a small HTTP/1.1 server in a process of its own that
answers 200 at once and notes, for every POST, when it arrived, its idempotency key and the
alert event's reading time).

(a) **Routing and delivery throughput.** ``--events`` alert events (as the worker writes
them: the JSON of ``AlertEvent`` with the sensor's location, keyed by sensor) are produced
to the alerts topic, and ``--subscriptions`` enabled webhook subscriptions (no rate limit)
that all match them point at the receiver.  Then ``iotmon notifier`` is started.  Routed:
alert events per second written to the ``notifications`` log (a row per event and
subscription), measured by the rows' ``created_at``, which the rows of one batch of events
share: the events after the first batch over the time from its start to the last one's.
Delivered: notifications per second from the first request the receiver took to the last.
Zero loss is checked, not assumed: every row ``SENT``, the receiver took each idempotency
key of the log exactly once.  The baseline is the same receiver driven by a plain httpx
loop in a process of its own, with the same concurrency (one request at a time per
subscription) and the notifier's own webhook code (the text, the body and its signature per
message), and no database: the HTTP ceiling.

(b) **End-to-end latency.** The bridge, ingest, worker and notifier run as processes.  A
gateway account publishes readings over MQTT (QoS 1), each stamped with its publish time as
``capture_dt``; ``--sensors`` sensors take turns, hot and cool rounds in turn, against a
temperature threshold with no hold or clear time, so every reading raises or resolves an
alert, and one webhook subscription is told about each.  The latency of an alert is the
time the receiver took its webhook minus the publish time.  Baseline in the same run, over
the same alerts: publish to the alert event read from the alerts topic (the pipeline
without the notifier), so the difference is what the notifier adds.  Every clock is this
machine's.

Results: ``bench/results/notify_delivery.*`` (or ``notify_delivery-<events>x<subscriptions>``
for other sizes) and ``notify_latency.*``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from multiprocessing.connection import Connection
from typing import Any

import httpx
import orjson
import psycopg
from psycopg import sql

from bench.common import RESULTS, latency_summary, write_results
from bench.latency import (
    COOL,
    HOT,
    AlertWatcher,
    PublisherProcess,
    _drop_run,
    _parse,
    _prepare,
    _run_settings,
)
from iotmon.db.migrate import migrate
from iotmon.gateways_cmd import local_gateway
from iotmon.settings import Settings
from iotmon.topics import ensure_topics
from producers.kafka import make_producer
from producers.simulator import build_plant
from schemas.alerts import AlertEvent, AlertKind, AlertTransition, with_location
from schemas.common import Status
from schemas.topics import topic_name
from stream_apps.notifier.channels import Outgoing, WebhookChannel, render

EVENTS, SUBSCRIPTIONS = 2000, 5  # (a)'s defaults: results in notify_delivery.*, others by size
SECRET = "bench-webhook-secret-0123456789"  # signed like a real subscription's messages
LOGS = RESULTS / "logs"


# -- the webhook receiver --------------------------------------------------------------------


class Receiver:
    """A webhook receiver in a process of its own (so that what it costs is not this
    process's, whose threads measure), driven over a pipe.

    Every POST is answered ``200`` at once, on kept-alive connections; for each the receiver
    keeps (idempotency key, arrival time, the event's ``reading_time``).
    """

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # not fork: this process runs threads
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_receiver_main, args=(child,), daemon=True)
        self._proc.start()
        self.port: int = self._call("port")

    def _call(self, command: str) -> Any:
        self._conn.send(command)
        while not self._conn.poll(1.0):
            if not self._proc.is_alive():
                raise RuntimeError(f"the receiver process died (exit {self._proc.exitcode})")
        return self._conn.recv()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self) -> int:
        return int(self._call("count"))

    def samples(self) -> list[tuple[str | None, float, str | None]]:
        """(idempotency key, arrival time, reading time) of every request since the last
        :meth:`reset`, in arrival order."""
        return [(s[0], s[1], s[2]) for s in self._call("samples")]

    def reset(self) -> None:
        self._call("reset")

    def close(self) -> None:
        if self._proc.is_alive():
            self._conn.send("close")
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()


def _receiver_main(conn: Connection) -> None:
    asyncio.run(_serve(conn))


class _Log:
    """What the receiver took: (idempotency key, arrival time, the event's reading time)."""

    def __init__(self) -> None:
        self.samples: list[tuple[str | None, float, str | None]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """HTTP/1.1 requests of one kept-alive connection, each answered 200 at once."""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length, key = 0, None
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"x-iotmon-idempotency-key":
                        key = value.strip().decode()
                body = await reader.readexactly(length) if length else b""
                arrived = time.time()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                event = (orjson.loads(body).get("event") or {}) if body else {}
                self.samples.append((key, arrived, event.get("reading_time")))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _serve(conn: Connection) -> None:
    log = _Log()
    done = asyncio.Event()
    server = await asyncio.start_server(log.handle, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    answers = {
        "port": lambda: port,
        "count": lambda: len(log.samples),
        "samples": lambda: list(log.samples),
        "reset": log.samples.clear,
    }

    def command() -> None:
        what = conn.recv()
        if what == "close":
            done.set()
        else:
            conn.send(answers[what]())

    asyncio.get_running_loop().add_reader(conn.fileno(), command)
    async with server:
        await done.wait()


# -- a run's database, topics and processes ----------------------------------------------------


def _connect(settings: Settings) -> psycopg.Connection[Any]:
    conn = psycopg.connect(settings.db.url, autocommit=True)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(settings.db.db_schema)))
    return conn


def add_subscriptions(settings: Settings, urls: Sequence[str]) -> list[int]:
    """One enabled webhook subscription per URL, for every temperature alert anywhere, with
    a secret, and no rate limit where the schema has one (``max_per_minute = 0``)."""
    with _connect(settings) as conn:
        ids = []
        for n, url in enumerate(urls):
            row = conn.execute(
                "INSERT INTO alert_subscriptions (subscriber, threshold_type, min_level,"
                " notify_type, notify_id, secret) VALUES (%s, 'temperature', 'warning',"
                " 'webhook', %s, %s) RETURNING subscription_id",
                (f"bench receiver {n}", url, SECRET),
            ).fetchone()
            assert row is not None
            ids.append(int(row[0]))
        limited = conn.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = %s"
            " AND table_name = 'alert_subscriptions' AND column_name = 'max_per_minute'",
            (settings.db.db_schema,),
        ).fetchone()
        if limited:
            conn.execute("UPDATE alert_subscriptions SET max_per_minute = 0")
    return ids


def _env(settings: Settings, run_id: str) -> dict[str, str]:
    return {
        **os.environ,
        "IOTMON_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "IOTMON_DB__DB_SCHEMA": settings.db.db_schema,
        # The stack's database login (its password file), although the state is elsewhere.
        "IOTMON_DB__URL": settings.db.url,
        "IOTMON_MQTT__TOPIC_PREFIX": settings.mqtt.topic_prefix,
        "IOTMON_MQTT__CLIENT_ID": settings.mqtt.client_id,
        # The stack's accounts, although each run keeps its state elsewhere.
        "IOTMON_MQTT__AUTH_DIR": str(settings.mqtt.auth_dir),
        "IOTMON_INGEST__GROUP_ID": f"ingest-{run_id}",
        "IOTMON_WORKER__APP_ID": f"worker-{run_id}",
        "IOTMON_WORKER__SILENT_AFTER_S": "3600",
        "IOTMON_WORKER__WEB_PORT": str(16100 + int(run_id[:3], 16) % 500),
        "IOTMON_NOTIFIER__GROUP_ID": f"notifier-{run_id}",
        "IOTMON_STACK__STATE_DIR": str(LOGS / run_id),
        "IOTMON_LOG__LEVEL": "WARNING",
        **{
            f"IOTMON_{s}__METRICS_PORT": "0"
            for s in ("BRIDGE", "INGEST", "WORKER", "SINK", "NOTIFIER")
        },
    }


def _start(settings: Settings, run_id: str, names: Sequence[str]) -> list[subprocess.Popen[bytes]]:
    """``iotmon <name>`` for each of ``names``, logging to files under the results."""
    LOGS.mkdir(parents=True, exist_ok=True)
    env = _env(settings, run_id)
    procs = []
    for name in names:
        with (LOGS / f"notify-{run_id}-{name}.log").open("ab") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "iotmon", name],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    return procs


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def _alive(procs: Sequence[subprocess.Popen[bytes]], run_id: str) -> None:
    for p in procs:
        if p.poll() is not None:
            raise RuntimeError(
                f"a process exited with {p.returncode}: see {LOGS}/notify-{run_id}-*.log"
            )


# -- (a) routing and delivery throughput -------------------------------------------------------


def alert_events(count: int, sensors: int = 200) -> list[AlertEvent]:
    """``count`` temperature alert events of ``sensors`` sensors of a simulated plant, with
    their locations: each sensor's alerts raised and resolved in turn, a second apart."""
    plant = build_plant(sensors, seed=5)
    start = datetime.now(UTC) - timedelta(seconds=count)
    events = []
    alert_ids: dict[str, uuid.UUID] = {}
    for i in range(count):
        sim = plant[i % len(plant)]
        sid = sim.sensor.sensor_id
        raised = (i // len(plant)) % 2 == 0
        if raised:
            alert_ids[sid] = uuid.uuid4()
        when = start + timedelta(seconds=i)
        value = Decimal("36.20") if raised else Decimal("30.10")
        event = AlertEvent(
            event_id=uuid.uuid4(),
            alert_id=alert_ids[sid],
            kind=AlertKind.THRESHOLD,
            transition=AlertTransition.RAISED if raised else AlertTransition.RESOLVED,
            sensor_id=sid,
            loc_id=sim.location.loc_id,
            metric="temperature",
            level=Status.WARNING,
            measured_value=value,
            threshold_id=1,
            threshold_level="yellow",
            threshold_min=Decimal("35.00"),
            threshold_max=Decimal("39.90"),
            reading_time=when,
            decided_at=when + timedelta(milliseconds=40),
            message=f"temperature {value} at {sid} ({sim.location.loc_id})",
        )
        events.append(with_location(event, sim.location))
    return events


def produce_events(settings: Settings, events: Sequence[AlertEvent]) -> None:
    producer = make_producer(settings.kafka)
    name = topic_name("alerts", settings.kafka.topic_prefix)
    for e in events:
        while True:
            try:
                producer.produce(name, key=e.sensor_id.encode(), value=e.model_dump_json().encode())
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(60):
        raise RuntimeError("alert events were not confirmed by Kafka")


def _log_counts(conn: psycopg.Connection[Any]) -> tuple[int, int, int]:
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE status = 'SENT'),"
        " count(*) FILTER (WHERE status = 'FAILED') FROM notifications"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def _routed_per_s(batches: Sequence[tuple[float, int]]) -> int | str:
    """Alert events routed per second, from the log's rows: the notifier writes the rows of
    a batch of events in one transaction, so they share its start time (``created_at``).
    The events after the first batch over the time from its start to the last one's."""
    if len(batches) < 2:
        return "(one batch)"
    return round(sum(n for _, n in batches[1:]) / (batches[-1][0] - batches[0][0]))


def _per_s(arrivals: Sequence[float]) -> int | str:
    """Requests per second from the first arrival to the last."""
    if len(arrivals) < 2 or max(arrivals) <= min(arrivals):
        return ""
    return round(len(arrivals) / (max(arrivals) - min(arrivals)))


def run_notifier(
    base: Settings, receiver: Receiver, events: Sequence[AlertEvent], subs: int, timeout_s: float
) -> dict[str, Any]:
    """The notifier over ``events`` (already on the topic when it starts) and ``subs``
    subscriptions; polls the log until every notification is ``SENT``."""
    run_id = uuid.uuid4().hex[:8]
    settings = _run_settings(base, run_id)
    settings = settings.model_copy(
        update={"db": settings.db.model_copy(update={"db_schema": f"bench_nt_{run_id}"})}
    )
    ensure_topics(settings.kafka)
    migrate(settings.db)
    try:
        sub_ids = add_subscriptions(settings, [receiver.url(f"/hook/{n}") for n in range(subs)])
        produce_events(settings, events)
        expected = len(events) * len(sub_ids)
        receiver.reset()
        started = time.perf_counter()
        procs = _start(settings, run_id, ["notifier"])
        all_rows = None
        rows = sent = failed = 0
        try:
            with _connect(settings) as conn:
                while time.perf_counter() - started < timeout_s:
                    _alive(procs, run_id)
                    rows, sent, failed = _log_counts(conn)
                    now = time.perf_counter()
                    if all_rows is None and rows >= expected:
                        all_rows = now
                    if sent + failed >= expected:
                        break
                    time.sleep(0.1)
            done = time.perf_counter()
            time.sleep(1.0)  # a repeat, if any, would arrive now
        finally:
            _stop(procs)
        samples = receiver.samples()
        with _connect(settings) as conn:
            logged = {r[0] for r in conn.execute("SELECT idempotency_key FROM notifications")}
            batches = conn.execute(
                "SELECT extract(epoch FROM created_at)::float8, count(DISTINCT event_id)"
                " FROM notifications GROUP BY created_at ORDER BY created_at"
            ).fetchall()
            statuses = dict(
                conn.execute("SELECT status, count(*) FROM notifications GROUP BY 1").fetchall()
            )
        keys = [s[0] for s in samples]
        received = set(keys)
        arrivals = [s[1] for s in samples]
        ok = (
            rows == expected
            and statuses.get("SENT") == expected
            and len(keys) == expected
            and received == logged
        )
        return {
            "events": len(events),
            "subscriptions": len(sub_ids),
            "notifications": expected,
            "routed_events_per_s": _routed_per_s(batches),
            "routing_batches": len(batches),
            "delivered_per_s": _per_s(arrivals),
            "wall_s": round(done - started, 2),
            "all_rows_after_s": round(all_rows - started, 2) if all_rows else "",
            "log_statuses": statuses,
            "received": len(keys),
            "repeats": len(keys) - len(received),
            "missing": len(logged - received),
            "zero_loss": "yes" if ok else "NO",
        }
    finally:
        _drop_run(settings)


def run_plain_http(receiver: Receiver, events: Sequence[AlertEvent], subs: int) -> dict[str, Any]:
    """The baseline: the same messages to the same receiver from a plain httpx loop in a
    process of its own, one lane per subscription, no database."""
    receiver.reset()
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    payloads = [e.model_dump_json().encode() for e in events]
    urls = [receiver.url(f"/hook/{n}") for n in range(subs)]
    proc = ctx.Process(target=_plain_main, args=(child, payloads, urls), daemon=True)
    proc.start()
    wall = float(parent.recv())
    proc.join(30)
    samples = receiver.samples()
    arrivals = [s[1] for s in samples]
    expected = len(events) * subs
    keys = [s[0] for s in samples]
    return {
        "events": len(events),
        "subscriptions": subs,
        "notifications": expected,
        "routed_events_per_s": "",
        "delivered_per_s": _per_s(arrivals),
        "wall_s": round(wall, 2),
        "received": len(keys),
        "repeats": len(keys) - len(set(keys)),
        "missing": expected - len(set(keys)),
        "zero_loss": "yes" if len(set(keys)) == expected == len(keys) else "NO",
    }


def _plain_main(conn: Connection, payloads: list[bytes], urls: list[str]) -> None:
    conn.send(asyncio.run(_plain(payloads, urls)))


async def _plain(payloads: list[bytes], urls: list[str]) -> float:
    """Every message to every URL, one at a time per URL, all URLs at once; seconds taken."""
    async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as client:
        channel = WebhookChannel(client)

        async def lane(n: int, url: str) -> None:
            for raw in payloads:
                event = AlertEvent.model_validate_json(raw)
                await channel.send(
                    Outgoing(f"{event.event_id}:{n}", n, url, SECRET, event, render(event))
                )

        started = time.perf_counter()
        await asyncio.gather(*(lane(n, url) for n, url in enumerate(urls)))
        return time.perf_counter() - started


def delivery(args: argparse.Namespace, base: Settings) -> None:
    events = alert_events(args.events)
    receiver = Receiver()
    try:
        baseline = run_plain_http(receiver, events, args.subscriptions)
        baseline["run"] = "baseline: httpx loop, same concurrency, no database"
        print(baseline, flush=True)
        notifier = run_notifier(base, receiver, events, args.subscriptions, args.timeout)
        notifier["run"] = "iotmon notifier"
        print(notifier, flush=True)
    finally:
        receiver.close()
    ceiling = baseline["delivered_per_s"]
    for row in (baseline, notifier):
        rate = row["delivered_per_s"]
        row["ratio_to_baseline"] = round(rate / ceiling, 2) if rate and ceiling else ""
    default = (args.events, args.subscriptions) == (EVENTS, SUBSCRIPTIONS)
    write_results(
        "notify_delivery" if default else f"notify_delivery-{args.events}x{args.subscriptions}",
        [baseline, notifier],
        [
            "run",
            "events",
            "subscriptions",
            "notifications",
            "routed_events_per_s",
            "delivered_per_s",
            "ratio_to_baseline",
            "wall_s",
            "received",
            "repeats",
            "missing",
            "zero_loss",
        ],
        extra={"events": args.events, "subscriptions": args.subscriptions},
        plot=("run", "delivered_per_s", "notifications delivered per second (higher is better)"),
    )


# -- (b) end-to-end latency --------------------------------------------------------------------


def _warm_up(
    publisher: PublisherProcess,
    receiver: Receiver,
    alerts: AlertWatcher,
    sensors: list[str],
    procs: Sequence[subprocess.Popen[bytes]],
    run_id: str,
    timeout_s: float = 180,
) -> None:
    """Hot, then cool, readings of every sensor until one such round has come through as
    a webhook per reading: the bridge is subscribed, the worker and the notifier have their
    partitions, and what happens only once (first records, first connections) is behind."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        receiver.reset()
        alerts.latencies.clear()
        for temperature in (HOT, COOL):
            publisher.each(sensors, temperature)
        round_end = min(deadline, time.monotonic() + 15)
        while time.monotonic() < round_end:
            _alive(procs, run_id)
            if receiver.count() >= 2 * len(sensors) and len(alerts.latencies) >= 2 * len(sensors):
                time.sleep(1.0)
                return
            time.sleep(0.2)
    raise RuntimeError("the warm-up alerts never reached the webhook receiver")


def latency(args: argparse.Namespace, base: Settings) -> None:
    run_id = uuid.uuid4().hex[:8]
    settings = _run_settings(base, run_id)
    settings = settings.model_copy(
        update={"db": settings.db.model_copy(update={"db_schema": f"bench_nl_{run_id}"})}
    )
    plant = _prepare(settings, args.sensors)
    sensors = [s.sensor_id for s in plant]
    receiver = Receiver()
    add_subscriptions(settings, [receiver.url("/hook/latency")])
    procs = _start(settings, run_id, ["worker", "ingest", "bridge", "notifier"])
    alerts = AlertWatcher(settings)
    publisher: PublisherProcess | None = None
    try:
        alerts.start()
        alerts.ready.wait(30)
        gateway = local_gateway(settings, "bench-gateway", write=["bench/#"])
        publisher = PublisherProcess(
            settings.mqtt.model_copy(
                update={"username": gateway.username, "password_file": gateway.password_file}
            ),
            10,
        )
        _warm_up(publisher, receiver, alerts, sensors, procs, run_id)
        receiver.reset()
        alerts.latencies.clear()
        started = time.monotonic()
        for i in range(args.alerts):
            # The state after the warm-up is cool: the first round raises, the next resolves.
            hot = (i // len(sensors)) % 2 == 0
            publisher.each([sensors[i % len(sensors)]], HOT if hot else COOL)
            delay = started + (i + 1) * args.every_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        deadline = time.monotonic() + 60
        while receiver.count() < args.alerts and time.monotonic() < deadline:
            _alive(procs, run_id)
            time.sleep(0.2)
        time.sleep(1.0)
        samples = receiver.samples()
    finally:
        alerts.stop.set()
        if publisher is not None:
            publisher.close()
        _stop(procs)
        receiver.close()
        _drop_run(settings)
    webhook = [arrived - _parse(reading) for _, arrived, reading in samples if reading]
    keys = [s[0] for s in samples]
    kafka = list(alerts.latencies)
    rows: list[dict[str, Any]] = [
        {
            "path": "baseline: MQTT publish -> alert event on Kafka",
            "samples": len(kafka),
            **latency_summary(kafka),
        },
        {
            "path": "MQTT publish -> webhook received (+ notifier)",
            "samples": len(webhook),
            **latency_summary(webhook),
        },
    ]
    rows[1].update(
        {f"added_{q}": round(rows[1][q] - rows[0][q], 2) for q in ("p50_ms", "p95_ms", "p99_ms")}
    )
    write_results(
        "notify_latency",
        rows,
        [
            "path",
            "samples",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "max_ms",
            "added_p50_ms",
            "added_p99_ms",
        ],
        extra={
            "alerts": args.alerts,
            "sensors": args.sensors,
            "every_s": args.every_s,
            "webhooks_expected": args.alerts,
            "webhooks_received": len(keys),
            "repeats": len(keys) - len(set(keys)),
        },
        plot=("path", "p99_ms", "p99 latency (ms)"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=EVENTS, help="alert events in (a)")
    parser.add_argument(
        "--subscriptions", type=int, default=SUBSCRIPTIONS, help="webhooks, all matching"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds (a) may take")
    parser.add_argument("--alerts", type=int, default=200, help="alerts timed in (b)")
    parser.add_argument("--sensors", type=int, default=20, help="sensors taking turns in (b)")
    parser.add_argument("--every-s", type=float, default=0.05, help="seconds between readings")
    parser.add_argument("--only", choices=("delivery", "latency"))
    args = parser.parse_args()
    base = Settings()
    if args.only in (None, "delivery"):
        delivery(args, base)
    if args.only in (None, "latency"):
        latency(args, base)


if __name__ == "__main__":
    main()
