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

Controls, all decided on rows of the log, so they survive restarts:

silences
    A match whose event falls in an active silence's scope and time range is written as
    ``SUPPRESSED`` (with the silence's id and reason) and never sent.
rate limits and digests
    At most ``max_per_minute`` messages a minute go to a subscription's target (the
    subscription's value, else the notifier's default; MQTT only when the subscription
    sets one).  When more are owed, the first go out one by one up to the limit's last
    slot, which carries all the rest as one digest; with no slot left they wait for one.
escalation
    A critical alert a subscription was told about, still active and unacknowledged
    ``escalate_after_s`` after that, gets one more row (purpose ``escalation``) to the
    subscription's escalation target.  If it is acknowledged or resolved before that row
    goes out, the row is suppressed instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import httpx
import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from prometheus_client import CollectorRegistry, Counter
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError

from api.poison import PoisonRecords
from iotmon.settings import Settings, notifier_mqtt
from schemas.alerts import AlertEvent
from schemas.deadletters import Stage
from schemas.topics import topic_name
from stream_apps.common.unavailable import database_unavailable
from stream_apps.notifier.channels import (
    Outgoing,
    Permanent,
    Transient,
    channels,
    fill_topic,
    location_state,
    render,
    render_digest,
    render_escalation,
)
from stream_apps.notifier.routing import Silence, Subscription, route, silenced_by

log = logging.getLogger(__name__)

_CLAIM = """
UPDATE notifications n
   SET next_attempt_at = now() + make_interval(secs => %(lease)s), updated_at = now(),
       claim = %(claim)s
 WHERE n.notification_id IN (
       SELECT notification_id FROM notifications o
        WHERE status IN ('PENDING', 'RETRYING') AND next_attempt_at <= now()
          -- In order: nothing of a subscription (and purpose) goes out while an earlier
          -- row of it waits for a retry, a rate limit or another claim's delivery.
          AND NOT EXISTS (
              SELECT 1 FROM notifications e
               WHERE e.subscription_id = o.subscription_id AND e.purpose = o.purpose
                 AND e.status IN ('PENDING', 'RETRYING')
                 AND e.notification_id < o.notification_id AND e.next_attempt_at > now())
        ORDER BY next_attempt_at, notification_id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED)
RETURNING n.notification_id, n.alert_id, n.subscription_id, n.idempotency_key, n.try_count,
          n.notify_type, n.notify_id, n.payload, n.purpose, n.claim
"""

# Right before a message goes out: its rows' lease, renewed while this claim still holds
# it (the rows still owed and not claimed again meanwhile).
_RENEW = """
UPDATE notifications
   SET next_attempt_at = now() + make_interval(secs => %(lease)s), updated_at = now()
 WHERE notification_id = ANY(%(ids)s) AND claim = %(claim)s
   AND status IN ('PENDING', 'RETRYING')
RETURNING notification_id
"""

# Critical alerts a subscription was told about (its first such row, by when it was
# written), still active and unacknowledged escalate_after_s later, not yet escalated.
_OVERDUE = """
SELECT DISTINCT ON (a.alert_id, s.subscription_id)
       a.alert_id, s.subscription_id, s.escalate_type, s.escalate_to, n.payload
  FROM alerts a
  JOIN notifications n ON n.alert_id = a.alert_id AND n.purpose = 'alert'
  JOIN alert_subscriptions s ON s.subscription_id = n.subscription_id
 WHERE a.state = 'active' AND a.alert_level = 'critical' AND a.acknowledged_at IS NULL
   AND s.enabled AND s.escalate_after_s IS NOT NULL
   AND n.status <> 'SUPPRESSED'
   AND n.payload->>'level' = 'critical'
   AND n.payload->>'transition' IN ('raised', 'escalated')
   AND n.created_at + make_interval(secs => s.escalate_after_s) <= now()
   AND NOT EXISTS (SELECT 1 FROM notifications e
                    WHERE e.event_id = a.alert_id AND e.subscription_id = s.subscription_id
                      AND e.purpose = 'escalation')
 ORDER BY a.alert_id, s.subscription_id, n.created_at
"""

_INSERT = """
INSERT INTO notifications (alert_id, event_id, subscription_id, notify_type, notify_id,
                           payload, purpose, status, silence_id, fail_reason)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (event_id, subscription_id, purpose) DO NOTHING
"""

# Each attempt, for every row a message carried: RETRYING becomes FAILED at the limit.
_RECORD = """
UPDATE notifications
   SET status = CASE WHEN %(status)s = 'RETRYING' AND try_count + 1 >= %(max)s THEN 'FAILED'
                     ELSE %(status)s END,
       try_count = try_count + 1,
       fail_reason = %(reason)s,
       sent_time = CASE WHEN %(status)s = 'SENT' THEN now() ELSE sent_time END,
       sent_as = CASE WHEN %(status)s = 'SENT' THEN %(sent_as)s ELSE sent_as END,
       next_attempt_at = now() + make_interval(secs => %(delay)s),
       updated_at = now()
 WHERE notification_id = ANY(%(ids)s) AND claim = %(claim)s
RETURNING status
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
        self.suppressed = Counter(
            "iotmon_notifier_suppressed_total",
            "Notifications not sent: muted by a silence, or an escalation made moot",
            ["reason"],
            registry=registry,
        )
        self.digests = Counter(
            "iotmon_notifier_digests_total",
            "Digest messages sent (a subscription over its rate limit)",
            registry=registry,
        )
        self.digested = Counter(
            "iotmon_notifier_digested_total",
            "Notifications carried by digests",
            registry=registry,
        )
        self.escalations = Counter(
            "iotmon_notifier_escalations_total",
            "Escalations of unacknowledged critical alerts, written to the log",
            registry=registry,
        )
        self.postponed = Counter(
            "iotmon_notifier_postponed_total",
            "Notifications held back a while by a rate limit",
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
        self.channels = channels(self.http, self.n, notifier_mqtt(settings))
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            settings.db.url,
            min_size=1,
            max_size=self.n.db_connections,
            open=False,
            kwargs={"autocommit": True},
            configure=self._configure,
            # A connection broken while idle (a database restart) is replaced when taken,
            # not handed to a delivery that would then wait out its lease.
            check=AsyncConnectionPool.check_connection,
            name="notifier",
        )
        self.wake = asyncio.Event()
        self.locks: dict[tuple[int, str], asyncio.Lock] = defaultdict(asyncio.Lock)
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

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(
            psycopg.sql.SQL("SET search_path TO {}").format(
                psycopg.sql.Identifier(self.settings.db.db_schema)
            )
        )

    async def subscriptions(self, conn: psycopg.AsyncConnection[Any]) -> list[Subscription]:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT * FROM alert_subscriptions WHERE enabled ORDER BY subscription_id"
            )
            return [Subscription.of(r) for r in await cur.fetchall()]

    async def silences(
        self, conn: psycopg.AsyncConnection[Any], since: datetime, until: datetime
    ) -> list[Silence]:
        """The silences active at some time in [since, until]."""
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT * FROM silences WHERE starts_at <= %s AND ends_at > %s",
                (until, since),
            )
            return [Silence.of(r) for r in await cur.fetchall()]

    # -- intake ---------------------------------------------------------------------------
    def parse(self, record: ConsumerRecord[bytes, bytes]) -> AlertEvent | None:
        try:
            return AlertEvent.model_validate_json(record.value or b"")
        except ValidationError as exc:
            self._poisoned(record, exc)
            return None

    def _poisoned(self, record: ConsumerRecord[bytes, bytes], exc: BaseException) -> None:
        """Count, log and dead-letter a record of the alerts topic intake cannot handle."""
        self.poison.report(
            "intake",
            exc,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
        )

    async def record(self, conn: psycopg.AsyncConnection[Any], events: list[AlertEvent]) -> int:
        """One row per (event, matching subscription), once: ``PENDING``, or
        ``SUPPRESSED`` when a silence mutes the event.  Returns how many are to be sent."""
        subs = await self.subscriptions(conn)
        matched = [(e, s) for e in events for s in route(e, subs)]
        if not matched:
            return 0
        silences = await self.silences(
            conn, min(e.decided_at for e, _ in matched), max(e.decided_at for e, _ in matched)
        )
        rows = []
        owed = 0
        for e, s in matched:
            muted = silenced_by(e, silences)
            rows.append(
                _log_row(
                    (e.alert_id, e.event_id, s.subscription_id, s.notify_type, s.notify_id),
                    orjson.loads(e.model_dump_json()),
                    "alert",
                    muted,
                )
            )
            if muted:
                self.metrics.suppressed.labels("silence").inc()
            else:
                owed += 1
        async with conn.transaction(), conn.cursor() as cur:
            await cur.executemany(_INSERT, rows)
        self.metrics.routed.inc(len(rows))
        return owed

    async def store(
        self,
        conn: psycopg.AsyncConnection[Any],
        pairs: list[tuple[ConsumerRecord[bytes, bytes], AlertEvent]],
    ) -> int:
        """The batch's rows, in one transaction; if the database (or routing) refuses the
        batch for something in it, event by event, and an event refused on its own is
        poison: dead-lettered with the reason, counted, passed.  An outage is raised."""
        try:
            return await self.record(conn, [e for _, e in pairs])
        except Exception as exc:
            if database_unavailable(exc):
                raise
            log.warning("notifier: a batch was refused (%s); storing event by event", exc)
        owed = 0
        for r, e in pairs:
            try:
                owed += await self.record(conn, [e])
            except Exception as exc:
                if database_unavailable(exc):
                    raise
                self._poisoned(r, exc)
        return owed

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
        # Read, not yet stored (their offsets uncommitted).
        pairs: list[tuple[ConsumerRecord[bytes, bytes], AlertEvent]] | None = None
        try:
            while not stop.is_set():
                if pairs is None:
                    batches = await consumer.getmany(timeout_ms=500, max_records=500)
                    if not batches:
                        continue
                    pairs = [
                        (r, e)
                        for records in batches.values()
                        for r in records
                        if (e := self.parse(r))
                    ]
                try:
                    conn = conn or await self._connect()
                    if pairs and await self.store(conn, pairs):
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
                pairs = None
        finally:
            await consumer.stop()
            await _closed(conn)
            self.poison.close()

    # -- delivery -------------------------------------------------------------------------
    async def deliver_due(self, conn: psycopg.AsyncConnection[Any]) -> int:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                _CLAIM, {"lease": self.n.lease_s, "limit": self.n.batch, "claim": uuid4()}
            )
            claimed = await cur.fetchall()
        if not claimed:
            return 0
        subs = {s.subscription_id: s for s in await self.subscriptions(conn)}
        groups: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
        for row in claimed:
            groups[(row["subscription_id"], row["purpose"])].append(row)
        for (sid, _purpose), rows in groups.items():
            rows.sort(key=lambda r: r["notification_id"])
            task = asyncio.create_task(self._deliver_group(rows, subs.get(sid)))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
        return len(claimed)

    def _limit(self, sub: Subscription) -> int:
        """Messages a minute the subscription's target may get (0: no limit)."""
        if sub.max_per_minute is not None:
            return sub.max_per_minute
        return 0 if sub.notify_type == "mqtt" else self.n.max_per_minute

    async def _deliver_group(self, rows: list[dict[str, Any]], sub: Subscription | None) -> None:
        """One subscription's claimed rows, in order, one message at a time."""
        # An escalation does not wait behind its subscription's hanging main target.
        async with self.locks[(rows[0]["subscription_id"], rows[0]["purpose"])]:
            try:
                await self._deliver_rows(rows, sub)
            except psycopg.Error as exc:
                # The lease runs out and the rows are claimed again (a message that went
                # out before this goes again, with its key).
                log.warning("notifier: the database failed during a delivery (%s)", exc)
            finally:
                # The subscription's next rows were waiting in line behind these: claim now,
                # not at the next poll.
                self.wake.set()

    def db(self) -> contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        """A connection of the pool, held only for one step: never while a message is on
        its way, so a hanging endpoint holds no connection another subscription needs."""
        return self.pool.connection(timeout=self.n.timeout_s)

    async def _deliver_rows(self, rows: list[dict[str, Any]], sub: Subscription | None) -> None:
        if sub is None:
            async with self.db() as conn:
                await self._record(
                    conn, rows, "failed", "the subscription was disabled or deleted", None
                )
            return
        alerts = [r for r in rows if r["purpose"] == "alert"]
        for row in rows:
            if row["purpose"] == "escalation":
                await self._escalate_one(row, sub)
        limit = self._limit(sub)
        if limit and alerts:
            async with self.db() as conn:
                sent, oldest = await self._recent(conn, sub)
                free = limit - sent
                if free <= 0:
                    await self._postpone(conn, alerts, oldest)
                    return
            if len(alerts) > free:
                for row in alerts[: free - 1]:
                    await self._send([row], sub, "alert")
                await self._send(alerts[free - 1 :], sub, "digest")
                return
        for row in alerts:
            await self._send([row], sub, "alert")

    async def _recent(
        self, conn: psycopg.AsyncConnection[Any], sub: Subscription
    ) -> tuple[int, datetime | None]:
        """Messages sent to the subscription's target in the last minute, by any
        subscription (a digest is one), and when the oldest of them went."""
        cur = await conn.execute(
            "SELECT count(DISTINCT sent_as), min(sent_time) FROM notifications"
            " WHERE notify_type = %s AND notify_id = %s AND status = 'SENT'"
            " AND sent_time > now() - interval '60 seconds'",
            (sub.notify_type, sub.notify_id),
        )
        row = await cur.fetchone()
        return (int(row[0]), row[1]) if row else (0, None)

    async def _postpone(
        self,
        conn: psycopg.AsyncConnection[Any],
        rows: list[dict[str, Any]],
        oldest: datetime | None,
    ) -> None:
        """No message left this minute: the rows wait until the oldest message of the
        minute leaves the window (no attempt counted)."""
        await conn.execute(
            "UPDATE notifications SET next_attempt_at = greatest(now(),"
            " coalesce(%s + interval '60 seconds', now() + interval '1 second')),"
            " updated_at = now() WHERE notification_id = ANY(%s) AND claim = %s",
            (oldest, [r["notification_id"] for r in rows], rows[0]["claim"]),
        )
        self.metrics.postponed.inc(len(rows))

    async def _escalate_one(self, row: dict[str, Any], sub: Subscription) -> None:
        """Send an escalation unless its alert was acknowledged or resolved meanwhile."""
        async with self.db() as conn:
            cur = await conn.execute(
                "SELECT state, acknowledged_by FROM alerts WHERE alert_id = %s",
                (row["alert_id"],),
            )
            alert = await cur.fetchone()
            if alert is not None and (alert[0] != "active" or alert[1] is not None):
                why = (
                    f"acknowledged by {alert[1]} before the escalation went out"
                    if alert[1] is not None
                    else "resolved before the escalation went out"
                )
                await conn.execute(
                    "UPDATE notifications SET status = 'SUPPRESSED', fail_reason = %s,"
                    " updated_at = now() WHERE notification_id = %s AND claim = %s",
                    (why, row["notification_id"], row["claim"]),
                )
                self.metrics.suppressed.labels("escalation_moot").inc()
                return
        await self._send([row], sub, "escalation")

    async def _send(self, rows: list[dict[str, Any]], sub: Subscription, kind: str) -> None:
        """Send one message for ``rows`` (one row, or a digest of several) and record it.

        The lease is renewed first, for the rows this claim still holds: a row that waited
        longer than the lease behind its subscription's other messages may have been
        claimed again meanwhile, and then it is the new claim's to send."""
        async with self.db() as conn:
            cur = await conn.execute(
                _RENEW,
                {
                    "lease": self.n.lease_s,
                    "ids": [r["notification_id"] for r in rows],
                    "claim": rows[0]["claim"],
                },
            )
            held = {r[0] for r in await cur.fetchall()}
        rows = [r for r in rows if r["notification_id"] in held]
        if not rows:
            return
        first = rows[0]
        key = first["idempotency_key"]
        if kind == "digest":
            key = f"digest:{sub.subscription_id}:{first['notification_id']}"
        outcome, reason = "sent", None
        try:
            channel = self.channels.get(first["notify_type"])
            if channel is None:
                raise Permanent(f"no {first['notify_type']} channel is configured")
            events = [AlertEvent.model_validate(r["payload"]) for r in rows]
            n, link = self.n, self.n.link or None
            if kind == "digest":
                text = render_digest(events, n.language, link)
            elif kind == "escalation":
                text = render_escalation(events[0], sub.escalate_after_s or 0, n.language, link)
            else:
                text = render(events[0], n.language, link)
            states: tuple[tuple[str, dict[str, Any]], ...] = ()
            if first["notify_type"] == "mqtt":
                async with self.db() as conn:
                    states = await self._states(conn, first["notify_id"], events)
            await self._within_timeout(
                channel,
                Outgoing(
                    key,
                    sub.subscription_id,
                    first["notify_id"],
                    sub.secret,
                    events[-1],
                    text,
                    kind=kind,
                    events=tuple(events) if kind == "digest" else (),
                    states=states,
                ),
            )
        except Transient as exc:
            outcome, reason = "retrying", str(exc)
        except Permanent as exc:
            outcome, reason = "failed", str(exc)
        except psycopg.Error:
            raise  # the database's trouble, not the message's: the lease brings it back
        except Exception as exc:
            outcome, reason = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("notification %s could not be sent", first["notification_id"])
        if outcome == "sent" and kind == "digest":
            self.metrics.digests.inc()
            self.metrics.digested.inc(len(rows))
        async with self.db() as conn:
            await self._record(conn, rows, outcome, reason, key)

    async def _within_timeout(self, channel: Any, message: Outgoing) -> None:
        """One attempt, bounded as a whole (not per read: a receiver that answers one byte
        a second would otherwise hold it past its lease)."""
        try:
            await asyncio.wait_for(channel.send(message), self.n.timeout_s)
        except TimeoutError as exc:
            raise Transient(f"no answer within {self.n.timeout_s:g}s") from exc

    async def _states(
        self, conn: psycopg.AsyncConnection[Any], template: str, events: list[AlertEvent]
    ) -> tuple[tuple[str, dict[str, Any]], ...]:
        """For the MQTT channel: each location's current state, once per topic (the latest
        of ``events`` there), its other active alerts read from the database."""
        latest: dict[str, AlertEvent] = {}
        for e in events:
            latest[fill_topic(template, e)] = e
        out = []
        for topic, event in latest.items():
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    "SELECT alert_id::text, kind, alert_type AS metric, alert_level AS level,"
                    " measured_value, alert_time AS since,"
                    " acknowledged_at IS NOT NULL AS acknowledged"
                    " FROM alerts WHERE loc_id = %s AND state = 'active'",
                    (event.loc_id,),
                )
                active = await cur.fetchall()
            out.append((topic, location_state(event, active)))
        return tuple(out)

    async def _record(
        self,
        conn: psycopg.AsyncConnection[Any],
        rows: list[dict[str, Any]],
        outcome: str,
        reason: str | None,
        sent_as: str | None,
    ) -> None:
        tries = max(r["try_count"] for r in rows) + 1
        delay = backoff_s(tries, self.n.backoff_base_s, self.n.backoff_max_s, self.rng)
        status = {"sent": "SENT", "retrying": "RETRYING", "failed": "FAILED"}[outcome]
        cur = await conn.execute(
            _RECORD,
            {
                "status": status,
                "max": self.n.max_attempts,
                "reason": reason,
                "sent_as": sent_as,
                "delay": delay,
                "ids": [r["notification_id"] for r in rows],
                "claim": rows[0]["claim"],
            },
        )
        for (final,) in await cur.fetchall():
            self.metrics.attempts.labels(rows[0]["notify_type"], final.lower()).inc()
        if outcome == "retrying":
            log.warning(
                "notification %s (%s): attempt %d failed, again in %.1fs: %s",
                rows[0]["notification_id"],
                rows[0]["notify_type"],
                tries,
                delay,
                reason,
            )

    # -- escalation ------------------------------------------------------------------------
    async def escalate(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Write an escalation row for every overdue critical alert; returns how many are
        to be sent (a silence active now mutes an escalation too)."""
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_OVERDUE)
            overdue = await cur.fetchall()
        if not overdue:
            return 0
        now = datetime.now(UTC)
        silences = await self.silences(conn, now, now)
        rows: list[tuple[Any, ...]] = []
        owed = 0
        for o in overdue:
            try:
                event = AlertEvent.model_validate(o["payload"])
            except ValidationError as exc:
                # A log row no notifier of this version wrote: recorded as a failed
                # escalation (once), never the end of the delivery loop.
                rows.append(
                    _log_row(
                        _escalation_keys(o),
                        o["payload"],
                        "escalation",
                        failed=f"the notification it escalates is unreadable: {exc.errors()[:1]}",
                    )
                )
                continue
            muted = silenced_by(event, silences, now)
            rows.append(_log_row(_escalation_keys(o), o["payload"], "escalation", muted))
            self.metrics.escalations.inc()
            if muted:
                self.metrics.suppressed.labels("silence").inc()
            else:
                owed += 1
        async with conn.transaction(), conn.cursor() as cur:
            await cur.executemany(_INSERT, rows)
        return owed

    async def delivery(self, stop: asyncio.Event) -> None:
        conn: psycopg.AsyncConnection[Any] | None = None
        checked = 0.0  # when overdue alerts were last looked for (monotonic)
        try:
            while not stop.is_set():
                try:
                    conn = conn or await self._connect()
                    if time.monotonic() - checked >= self.n.escalation_check_s:
                        await self.escalate(conn)
                        checked = time.monotonic()
                    # Cleared before looking, so a wake-up (new rows, a subscription's
                    # line moving on) that comes while we look is not lost.
                    self.wake.clear()
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
        await self.pool.open(wait=False)
        try:
            await asyncio.gather(self.intake(stop), self.delivery(stop))
        finally:
            if self.in_flight:
                await asyncio.wait(self.in_flight, timeout=self.n.timeout_s + 1)
            await self.http.aclose()
            mqtt_channel = self.channels.get("mqtt")
            if mqtt_channel is not None:
                mqtt_channel.close()
            await self.pool.close()


def _log_row(
    keys: tuple[Any, Any, int, str, str],
    payload: Any,
    purpose: str,
    muted: Silence | None = None,
    *,
    failed: str | None = None,
) -> tuple[Any, ...]:
    """The parameters of _INSERT: (alert id, event id, subscription, channel, target), the
    payload and purpose; PENDING, SUPPRESSED by ``muted``, or FAILED with ``failed``."""
    if failed is not None:
        return (*keys, Jsonb(payload), purpose, "FAILED", None, failed)
    if muted is not None:
        return (
            *keys,
            Jsonb(payload),
            purpose,
            "SUPPRESSED",
            muted.silence_id,
            _muted_reason(muted),
        )
    return (*keys, Jsonb(payload), purpose, "PENDING", None, None)


def _escalation_keys(row: dict[str, Any]) -> tuple[Any, Any, int, str, str]:
    """An escalation's row names its alert as its event (one per alert and subscription)."""
    return (
        row["alert_id"],
        row["alert_id"],
        row["subscription_id"],
        row["escalate_type"],
        row["escalate_to"],
    )


def _muted_reason(silence: Silence) -> str:
    return f"silenced by #{silence.silence_id} ({silence.created_by}): {silence.reason}"


async def _closed(conn: psycopg.AsyncConnection[Any] | None) -> None:
    """Close ``conn`` if there is one, whatever state it is in."""
    if conn is not None:
        with contextlib.suppress(psycopg.Error):
            await conn.close()


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
