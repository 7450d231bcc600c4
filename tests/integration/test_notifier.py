"""The notifier on the real Kafka and PostgreSQL, with local HTTP receivers: signed webhooks,
retries into the delivery log, a hanging endpoint that delays nobody else, and each
(event, subscription) sent once, also when the events are read again."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from uuid import uuid4

import orjson
import psycopg
import pytest
from prometheus_client import CollectorRegistry

from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.kafka import make_producer
from schemas.alerts import AlertEvent, AlertKind, AlertTransition
from schemas.common import Status
from schemas.topics import topic_name
from stream_apps.notifier.channels import IDEMPOTENCY_HEADER, SIGNATURE_HEADER
from stream_apps.notifier.service import Notifier
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


@dataclass
class Received:
    path: str
    body: bytes
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


class Receivers:
    """One local HTTP server: ``/ok`` (and any other path) answers 200, ``/flaky`` 503
    three times then 200, ``/hang`` holds the request for 20 s, ``/gone`` 404, ``/slow``
    200 after 50 ms, ``/drip`` its status line one byte a second, ``/endless500`` a 500
    whose body goes on for 13 GB."""

    def __init__(self) -> None:
        self.got: list[Received] = []
        self.hang_ended: list[float] = []
        self.flaky = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.got.append(Received(self.path, body, dict(self.headers.items())))
                status = 200
                if self.path == "/flaky":
                    with outer.lock:
                        outer.flaky += 1
                        status = 503 if outer.flaky <= 3 else 200
                elif self.path == "/hang":
                    time.sleep(20)
                    outer.hang_ended.append(time.monotonic())
                elif self.path == "/gone":
                    status = 404
                elif self.path == "/slow":
                    time.sleep(0.05)
                elif self.path == "/drip":  # the status line, one byte a second
                    with contextlib.suppress(OSError):
                        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(1)
                    self.close_connection = True
                    return
                elif self.path == "/endless500":  # a 500 whose answer never ends
                    with contextlib.suppress(OSError):
                        self.send_response(500)
                        self.end_headers()
                        for _ in range(200_000):
                            self.wfile.write(b"x" * 65536)
                    self.close_connection = True
                    return
                try:
                    self.send_response(status)
                    self.end_headers()
                except OSError:
                    pass  # the notifier gave up waiting

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def to(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.got if r.path == path]

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    r = Receivers()
    yield r
    r.close()


def alert(sensor: str = "TEMPIOT-A011", factory: str = "SinPyeong") -> AlertEvent:
    now = datetime.now(UTC)
    return AlertEvent(
        event_id=uuid4(),
        alert_id=uuid4(),
        kind=AlertKind.THRESHOLD,
        transition=AlertTransition.RAISED,
        sensor_id=sensor,
        loc_id=sensor[-4:],
        metric="pcv_temperature",
        level=Status.CRITICAL,
        measured_value=Decimal("34.10"),
        threshold_id=3,
        threshold_level="orange",
        threshold_min=Decimal("33.00"),
        threshold_max=None,
        reading_time=now,
        decided_at=now,
        message="hot",
        factory=factory,
        building="MX-1",
        floor=1,
    )


def subscribe(db: DatabaseSettings, **fields: Any) -> int:
    doc = {"subscriber": "kim", "notify_type": "webhook", **fields}
    columns = ", ".join(doc)
    marks = ", ".join(["%s"] * len(doc))
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        row = conn.execute(
            f"INSERT INTO alert_subscriptions ({columns}) VALUES ({marks})"
            " RETURNING subscription_id",
            tuple(doc.values()),
        ).fetchone()
    assert row is not None
    return int(row[0])


def log_of(db: DatabaseSettings) -> dict[int, tuple[str, int, str | None]]:
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        rows = conn.execute(
            "SELECT subscription_id, status, try_count, fail_reason, sent_time FROM notifications"
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def publish(kafka: KafkaSettings, events: list[AlertEvent]) -> None:
    producer = make_producer(kafka)
    for e in events:
        producer.produce(
            topic_name("alerts", kafka.topic_prefix),
            e.model_dump_json().encode(),
            key=e.sensor_id.encode(),
        )
    assert producer.flush(20) == 0


class Running:
    """A Notifier on its own event loop in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.registry = CollectorRegistry()
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.notifier: Notifier | None = None
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(self.loop)

            async def go() -> None:
                self.notifier = Notifier(settings, self.registry)
                ready.set()
                await self.notifier.run(self.stop)

            self.loop.run_until_complete(go())

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(40)


def settings_for(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, group: str
) -> Settings:
    return stack.model_copy(
        update={
            "kafka": kafka,
            "db": db,
            "notifier": stack.notifier.model_copy(
                update={
                    "group_id": group,
                    "backoff_base_s": 0.2,
                    "backoff_max_s": 0.5,
                    "timeout_s": 3.0,
                    "lease_s": 30.0,
                    "poll_s": 0.1,
                    "language": "en",
                    # No rate limit unless a test sets one (test_notifier_controls.py).
                    "max_per_minute": 0,
                    "escalation_check_s": 0.5,
                }
            ),
        }
    )


def test_signed_webhooks_retries_and_a_hanging_endpoint_that_delays_no_one(
    stack: Settings,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    group_id: str,
    receivers: Receivers,
) -> None:
    ok = subscribe(
        db, notify_id=f"{receivers.url}/ok", secret="webhook-secret-1", factory="SinPyeong"
    )
    flaky = subscribe(db, notify_id=f"{receivers.url}/flaky")
    hang = subscribe(db, notify_id=f"{receivers.url}/hang")
    gone = subscribe(db, notify_id=f"{receivers.url}/gone")
    other = subscribe(db, notify_id=f"{receivers.url}/ok", factory="JangNim")
    quiet = subscribe(
        db, notify_id=f"{receivers.url}/ok", min_level="critical", threshold_type="humidity"
    )
    event = alert()
    running = Running(settings_for(stack, kafka, db, group_id))
    try:
        publish(kafka, [event])
        wait_for(lambda: len(receivers.to("/ok")) == 1, timeout=30, what="the webhook")
        # The hanging endpoint is still holding its request: nobody waited for it.
        assert receivers.to("/hang") and not receivers.hang_ended
        wait_for(
            lambda: log_of(db).get(flaky, ("",))[0] == "SENT", timeout=30, what="the flaky one"
        )
        wait_for(lambda: log_of(db).get(gone, ("",))[0] == "FAILED", timeout=30, what="the 404")
    finally:
        running.close()
    got = receivers.to("/ok")[0]
    expected = hmac.new(b"webhook-secret-1", got.body, hashlib.sha256).hexdigest()
    assert got.headers[SIGNATURE_HEADER] == f"sha256={expected}"
    assert got.headers[IDEMPOTENCY_HEADER] == f"{event.event_id}:{ok}"
    doc = orjson.loads(got.body)
    assert AlertEvent.model_validate(doc["event"]) == event
    assert doc["text"].startswith("[CRITICAL] Perceived temperature 34.10°C — SinPyeong")
    log = log_of(db)
    assert log[ok][:2] == ("SENT", 1)
    assert log[flaky][:2] == ("SENT", 4)  # three 503s, then delivered
    assert {r.headers[IDEMPOTENCY_HEADER] for r in receivers.to("/flaky")} == {
        f"{event.event_id}:{flaky}"
    }
    assert len(receivers.to("/flaky")) == 4
    assert log[gone][0] == "FAILED" and log[gone][1] == 1 and "404" in str(log[gone][2])
    assert log[hang][0] in ("PENDING", "RETRYING", "FAILED")  # timed out, never SENT
    assert other not in log and quiet not in log  # another factory; another metric


def test_each_event_and_subscription_is_sent_once_even_when_read_again(
    stack: Settings,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    group_id: str,
    receivers: Receivers,
) -> None:
    subs = [subscribe(db, notify_id=f"{receivers.url}/ok", secret=f"s{i}" * 8) for i in range(3)]
    events = [alert(sensor=f"TEMPIOT-B{n:03d}") for n in range(20)]
    publish(kafka, events)
    first = Running(settings_for(stack, kafka, db, group_id))
    try:
        wait_for(lambda: len(receivers.to("/ok")) == 60, timeout=60, what="60 notifications")
    finally:
        first.close()
    # Another consumer group reads every event again (as after lost offsets): the log's
    # unique (event, subscription) key makes that a no-op.
    again = Running(settings_for(stack, kafka, db, f"{group_id}-again"))
    try:
        wait_for(
            lambda: (again.registry.get_sample_value("iotmon_notifier_routed_total") or 0) >= 60,
            timeout=30,
            what="the events read and routed again",
        )
    finally:
        again.close()
    keys = [r.headers[IDEMPOTENCY_HEADER] for r in receivers.to("/ok")]
    assert len(keys) == len(set(keys)) == 60
    assert set(keys) == {f"{e.event_id}:{s}" for e in events for s in subs}
    assert all(v[:2] == ("SENT", 1) for v in log_of(db).values())


class Mailbox:
    """aiosmtpd's handler: keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


def test_an_email_reaches_the_smtp_server_with_text_and_html(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, group_id: str
) -> None:
    from email import message_from_bytes, policy  # noqa: PLC0415

    from aiosmtpd.controller import Controller  # noqa: PLC0415

    from tests.pipeline import free_port  # noqa: PLC0415

    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        sid = subscribe(db, notify_type="email", notify_id="safety@plant.example")
        settings = settings_for(stack, kafka, db, group_id)
        settings = settings.model_copy(
            update={
                "notifier": settings.notifier.model_copy(
                    update={
                        "smtp_host": "127.0.0.1",
                        "smtp_port": port,
                        "smtp_starttls": False,  # a local test server without TLS
                        "smtp_from": "iotmon@plant.example",
                        "link": "https://plant.example/dashboard",
                    }
                )
            }
        )
        event = alert()
        running = Running(settings)
        try:
            publish(kafka, [event])
            wait_for(lambda: len(mailbox.messages) == 1, timeout=30, what="the e-mail")
            wait_for(lambda: log_of(db).get(sid, ("",))[0] == "SENT", timeout=10, what="SENT")
        finally:
            running.close()
    finally:
        controller.stop()
    envelope = mailbox.messages[0]
    assert envelope.rcpt_tos == ["safety@plant.example"]
    mail = message_from_bytes(envelope.content, policy=policy.default)
    assert mail["From"] == "iotmon@plant.example"
    assert mail["Subject"].startswith("[CRITICAL] Perceived temperature 34.10°C — SinPyeong")
    assert mail["X-Iotmon-Idempotency-Key"] == f"{event.event_id}:{sid}"
    plain, rich = mail.get_body(("plain",)), mail.get_body(("html",))
    assert plain is not None and rich is not None
    text, html_part = plain.get_content(), rich.get_content()
    assert "https://plant.example/dashboard" in text
    assert "<th align='left'>metric</th><td>pcv_temperature</td>" in html_part
    assert "<th align='left'>factory</th><td>SinPyeong</td>" in html_part


def test_a_record_that_is_no_alert_event_is_dead_lettered_and_the_next_one_sent(
    stack: Settings,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    group_id: str,
    receivers: Receivers,
) -> None:
    from schemas.deadletters import DeadLetterHeaders  # noqa: PLC0415
    from tests.helpers import headers_of, read_topic  # noqa: PLC0415

    subscribe(db, notify_id=f"{receivers.url}/ok")
    producer = make_producer(kafka)
    producer.produce(topic_name("alerts", kafka.topic_prefix), b'{"not": "an event"}', key=b"X")
    assert producer.flush(20) == 0
    event = alert()
    publish(kafka, [event])
    running = Running(settings_for(stack, kafka, db, group_id))
    try:
        wait_for(lambda: len(receivers.to("/ok")) == 1, timeout=30, what="the good event")
        dead = read_topic(
            kafka, topic_name("dead_letters", kafka.topic_prefix), until=lambda m: len(m) >= 1
        )
    finally:
        running.close()
    assert [headers_of(m)[DeadLetterHeaders.STAGE] for m in dead] == [b"notifier"]
    assert dead[0].value() == b'{"not": "an event"}'
    assert orjson.loads(receivers.to("/ok")[0].body)["event"]["event_id"] == str(event.event_id)


def test_a_database_outage_pauses_the_notifier_and_loses_no_event(
    stack: Settings,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    group_id: str,
    receivers: Receivers,
) -> None:
    """Events read while PostgreSQL is away are kept (their offsets uncommitted) and stored
    once it is back; each is sent once."""
    from tests.tcp_proxy import TcpProxy  # noqa: PLC0415

    sid = subscribe(db, notify_id=f"{receivers.url}/ok")
    base = psycopg.conninfo.conninfo_to_dict(db.url)
    proxy = TcpProxy(str(base.get("host", "127.0.0.1")), int(str(base.get("port", 5432))))
    via_proxy = psycopg.conninfo.make_conninfo(db.url, host="127.0.0.1", port=proxy.port)
    settings = settings_for(stack, kafka, db.model_copy(update={"url": via_proxy}), group_id)
    running = Running(settings)
    try:
        before = alert(sensor="TEMPIOT-C001")
        publish(kafka, [before])
        wait_for(lambda: len(receivers.to("/ok")) == 1, timeout=30, what="the first event")
        proxy.cut()
        during = [alert(sensor=f"TEMPIOT-C{n:03d}") for n in range(2, 7)]
        publish(kafka, during)
        time.sleep(2)  # the notifier reads them while the database is away
        assert len(receivers.to("/ok")) == 1
        proxy.restore()
        wait_for(lambda: len(receivers.to("/ok")) == 6, timeout=60, what="the events stored")
    finally:
        running.close()
        proxy.close()
    keys = sorted(r.headers[IDEMPOTENCY_HEADER] for r in receivers.to("/ok"))
    assert keys == sorted(f"{e.event_id}:{sid}" for e in [before, *during])
