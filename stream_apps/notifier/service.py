"""``iotmon notifier``: alert events in, notifications out, each (event, subscription) once.

Two loops in one asyncio process:

intake
    Reads the alerts topic (consumer group ``notifier.group_id``), routes each event to the
    enabled subscriptions (:mod:`routing`) and writes one ``notifications`` row per match
    (``ON CONFLICT (event_id, subscription_id) DO NOTHING``), then commits the Kafka
    offsets: after the database, so a crash re-reads events whose rows may be missing, and
    the unique key makes the second write a no-op.  A record that is no alert event is
    counted, logged and dead-lettered (stage ``notifier``), and passed.  While PostgreSQL is
    away the loop keeps the batch it read, pauses, and stores it once the database is back.
delivery
    Claims owed rows (``PENDING``/``RETRYING`` and due) with a lease (``FOR UPDATE SKIP
    LOCKED``, ``next_attempt_at`` moved ahead by ``lease_s``), sends each through its
    channel, and records the attempt: ``SENT`` with ``sent_time``, ``RETRYING`` with the
    next attempt after an exponential backoff with jitter, or ``FAILED`` after
    ``max_attempts`` or a permanent refusal, with ``fail_reason``.  One subscription's
    messages go out in order, one at a time; subscriptions do not wait for each other, so
    a slow or dead endpoint delays only its own.

A kill between a send and its record leaves the row leased: after ``lease_s`` it is sent
again, with the same idempotency key (``<event id>:<subscription id>``) for the receiver to
drop.  That one in-flight message is the only repeat a crash can cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import defaultdict
from typing import Any

import httpx
import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from prometheus_client import CollectorRegistry, Counter
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from api.poison import PoisonRecords
from iotmon.settings import Settings
from schemas.alerts import AlertEvent
from schemas.deadletters import Stage
from schemas.topics import topic_name
from stream_apps.common.unavailable import database_unavailable
from stream_apps.notifier.channels import Outgoing, Permanent, Transient, channels, render
from stream_apps.notifier.routing import Subscription, route

log = logging.getLogger(__name__)

_CLAIM = """
UPDATE notifications n
   SET next_attempt_at = now() + make_interval(secs => %(lease)s), updated_at = now()
 WHERE n.notification_id IN (
       SELECT notification_id FROM notifications
        WHERE status IN ('PENDING', 'RETRYING') AND next_attempt_at <= now()
        ORDER BY next_attempt_at, notification_id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED)
RETURNING n.notification_id, n.subscription_id, n.idempotency_key, n.try_count,
          n.notify_type, n.notify_id, n.payload
"""


class NotifierMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.routed = Counter(
            "iotmon_notifier_routed_total",
            "Matches of an alert event and a subscription (each written to the log once)",
            registry=registry,
        )
        self.attempts = Counter(
            "iotmon_notifier_attempts_total",
            "Delivery attempts by channel and outcome (sent, retrying, failed)",
            ["channel", "outcome"],
            registry=registry,
        )


def backoff_s(tries: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds before attempt ``tries + 1``: exponential from ``base``, at most ``cap``,
    with full jitter over its upper half (no thundering herd after an outage)."""
    ceiling: float = min(cap, base * 2.0 ** max(tries - 1, 0))
    return ceiling / 2 + rng.random() * ceiling / 2


class Notifier:
    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        *,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = settings
        self.n = settings.notifier
        registry = registry or CollectorRegistry()
        self.metrics = NotifierMetrics(registry)
        self.poison = PoisonRecords(settings.kafka, registry, Stage.NOTIFIER)
        self.http = http or httpx.AsyncClient(timeout=self.n.timeout_s, follow_redirects=False)
        self.channels = channels(self.http, self.n)
        self.wake = asyncio.Event()
        self.locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.in_flight: set[asyncio.Task[None]] = set()
        self.rng = random.Random()

    # -- database ------------------------------------------------------------------------
    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(self.settings.db.url, autocommit=True)
        await conn.execute(
            psycopg.sql.SQL("SET search_path TO {}").format(
                psycopg.sql.Identifier(self.settings.db.db_schema)
            )
        )
        return conn

    async def subscriptions(self, conn: psycopg.AsyncConnection[Any]) -> list[Subscription]:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT * FROM alert_subscriptions WHERE enabled ORDER BY subscription_id"
            )
            return [Subscription.of(r) for r in await cur.fetchall()]

    # -- intake ---------------------------------------------------------------------------
    def parse(self, record: ConsumerRecord[bytes, bytes]) -> AlertEvent | None:
        try:
            return AlertEvent.model_validate_json(record.value or b"")
        except ValidationError as exc:
            self.poison.report(
                "intake",
                exc,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                key=record.key,
                value=record.value,
            )
            return None

    async def record(self, conn: psycopg.AsyncConnection[Any], events: list[AlertEvent]) -> int:
        """One row per (event, matching subscription), once; returns the new rows."""
        subs = await self.subscriptions(conn)
        rows = [
            (
                e.alert_id,
                e.event_id,
                s.subscription_id,
                s.notify_type,
                s.notify_id,
                Jsonb(orjson.loads(e.model_dump_json())),
            )
            for e in events
            for s in route(e, subs)
        ]
        if not rows:
            return 0
        async with conn.transaction(), conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO notifications (alert_id, event_id, subscription_id, notify_type,"
                " notify_id, payload) VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (event_id, subscription_id) DO NOTHING",
                rows,
            )
        self.metrics.routed.inc(len(rows))
        return len(rows)

    async def intake(self, stop: asyncio.Event) -> None:
        k = self.settings.kafka
        consumer = AIOKafkaConsumer(
            topic_name("alerts", k.topic_prefix),
            **k.aiokafka_options(),
            client_id=f"{k.client_id}-notifier",
            group_id=self.n.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        conn: psycopg.AsyncConnection[Any] | None = None
        events: list[AlertEvent] | None = None  # read, not yet stored (offsets uncommitted)
        try:
            while not stop.is_set():
                if events is None:
                    batches = await consumer.getmany(timeout_ms=500, max_records=500)
                    if not batches:
                        continue
                    events = [
                        e for records in batches.values() for r in records if (e := self.parse(r))
                    ]
                try:
                    conn = conn or await self._connect()
                    if events and await self.record(conn, events):
                        self.wake.set()
                except Exception as exc:
                    if not database_unavailable(exc):
                        raise
                    # Keep these events, read nothing more, and store them once the
                    # database is back (their rows are written once whatever happened).
                    log.warning("notifier: the database unavailable (%s); retrying", exc)
                    await _closed(conn)
                    conn = None
                    await _pause(stop, self.n.poll_s * 5)
                    continue
                await consumer.commit()  # after the rows are in the database
                events = None
        finally:
            await consumer.stop()
            await _closed(conn)
            self.poison.close()

    # -- delivery -------------------------------------------------------------------------
    async def deliver_due(self, conn: psycopg.AsyncConnection[Any]) -> int:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_CLAIM, {"lease": self.n.lease_s, "limit": self.n.batch})
            claimed = await cur.fetchall()
        if not claimed:
            return 0
        subs = {s.subscription_id: s for s in await self.subscriptions(conn)}
        for row in claimed:
            task = asyncio.create_task(self._deliver(row, subs.get(row["subscription_id"])))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
        return len(claimed)

    async def _deliver(self, row: dict[str, Any], sub: Subscription | None) -> None:
        async with self.locks[row["subscription_id"]]:  # one subscription: in order
            outcome, reason = "sent", None
            try:
                if sub is None:
                    raise Permanent("the subscription was disabled or deleted")
                channel = self.channels.get(row["notify_type"])
                if channel is None:
                    raise Permanent(f"no {row['notify_type']} channel is configured")
                event = AlertEvent.model_validate(row["payload"])
                text = render(event, self.n.language, self.n.link or None)
                await channel.send(
                    Outgoing(
                        row["idempotency_key"],
                        sub.subscription_id,
                        row["notify_id"],
                        sub.secret,
                        event,
                        text,
                    )
                )
            except Transient as exc:
                outcome, reason = "retrying", str(exc)
            except Permanent as exc:
                outcome, reason = "failed", str(exc)
            except Exception as exc:
                outcome, reason = "failed", f"{type(exc).__name__}: {exc}"
                log.exception("notification %s could not be sent", row["notification_id"])
            await self._record_attempt(row, outcome, reason)

    async def _record_attempt(self, row: dict[str, Any], outcome: str, reason: str | None) -> None:
        tries = row["try_count"] + 1
        if outcome == "retrying" and tries >= self.n.max_attempts:
            outcome = "failed"
        delay = backoff_s(tries, self.n.backoff_base_s, self.n.backoff_max_s, self.rng)
        status = {"sent": "SENT", "retrying": "RETRYING", "failed": "FAILED"}[outcome]
        self.metrics.attempts.labels(row["notify_type"], outcome).inc()
        conn = await self._connect()
        try:
            await conn.execute(
                "UPDATE notifications SET status = %s, try_count = %s, fail_reason = %s,"
                " sent_time = CASE WHEN %s = 'SENT' THEN now() ELSE sent_time END,"
                " next_attempt_at = now() + make_interval(secs => %s), updated_at = now()"
                " WHERE notification_id = %s",
                (status, tries, reason, status, delay, row["notification_id"]),
            )
        finally:
            await conn.close()
        if outcome == "retrying":
            log.warning(
                "notification %s (%s): attempt %d failed, again in %.1fs: %s",
                row["notification_id"],
                row["notify_type"],
                tries,
                delay,
                reason,
            )

    async def delivery(self, stop: asyncio.Event) -> None:
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            while not stop.is_set():
                try:
                    conn = conn or await self._connect()
                    claimed = await self.deliver_due(conn)
                except Exception as exc:
                    if not database_unavailable(exc):
                        raise
                    log.warning("notifier: the database unavailable (%s); retrying", exc)
                    await _closed(conn)
                    conn = None
                    await _pause(stop, self.n.poll_s * 5)
                    continue
                if claimed:
                    continue
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.n.poll_s)
        finally:
            await _closed(conn)

    async def run(self, stop: asyncio.Event) -> None:
        log.info(
            "notifier: %s -> subscriptions of schema %s (group %s)",
            topic_name("alerts", self.settings.kafka.topic_prefix),
            self.settings.db.db_schema,
            self.n.group_id,
        )
        try:
            await asyncio.gather(self.intake(stop), self.delivery(stop))
        finally:
            if self.in_flight:
                await asyncio.wait(self.in_flight, timeout=self.n.timeout_s + 1)
            await self.http.aclose()


async def _closed(conn: psycopg.AsyncConnection[Any] | None) -> None:
    """Close ``conn`` if there is one, whatever state it is in."""
    if conn is not None:
        with contextlib.suppress(psycopg.Error):
            await conn.close()


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
