"""`iotmon demo`: the whole pipeline on the local stack with simulated gateways.

Starts the long-running processes (bridge, ingest, worker, sink, API, notifier) as children
with their logs under the state directory, runs the gateway simulator in the foreground, and
prints how many records each topic received in this run.  Then everything stays up, with a
simulator reporting normal weather (:func:`live_simulator_args`), so that the dashboard stays
live until Ctrl-C, SIGTERM or SIGHUP (:func:`stopped_like_ctrl_c`), or until the stack is
stopped; then the children are stopped.

Alert delivery is shown with receivers inside this process (:mod:`iotmon.demo_receivers`):
a webhook receiver that checks the signature, a Slack-format endpoint and an SMTP sink.  The
demo's subscriptions to them (:data:`DEMO_SUBSCRIBERS`) are created once and updated on
every run (new ports, a new webhook secret), enabled while the demo runs and disabled when it
ends, since their targets end with it.  The notifier reads the alerts topic in its own
consumer group, moved to the end of the topic first, so it tells of this run's alerts only;
it also delivers to every other enabled subscription of the database.  After the simulator
the notifier gets up to :data:`DELIVERY_WAIT_S` to send what it owes the receivers (a rate
limit's digest comes after its minute); then the demo prints what each receiver got and the
notification log of this run by channel and status.  The notifier goes on while the demo
stays up; what it still owes the receivers when the demo ends is marked FAILED.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition
from psycopg import sql

from iotmon.demo_receivers import Delivery, SmtpSink, WebhookReceiver, demo_receivers
from iotmon.gateways_cmd import local_gateway
from iotmon.settings import DatabaseSettings, Settings
from schemas.topics import TopicId, topic_name

log = logging.getLogger(__name__)

SERVICES: dict[str, list[str]] = {
    "bridge": ["bridge"],
    "ingest": ["ingest"],
    "worker": ["worker"],
    "sink": ["sink"],
    "api": ["api"],
    "notifier": ["notifier"],
}

# The demo's API accepts this bearer token (admin) unless IOTMON_API__TOKENS is set.  It is
# for trying the API on one machine, never for a deployment.
DEMO_TOKEN = "demo-admin-token"
# The simulator publishes as this gateway account (created on first use, its password kept
# in the stack's auth directory); the simulated sensors are assigned to it.
DEMO_GATEWAY = "demo-gateway"
DEMO_TOPICS: list[TopicId] = [
    "readings_mqtt",
    "readings_raw",
    "readings",
    "dead_letters",
    "sensors",
    "aggregates_hourly",
    "alerts",
]
# The demo's notifier reads the alerts topic in this group (moved to the topic's end first).
DEMO_NOTIFIER_GROUP = "iotmon-demo-notifier"
# The demo's subscriptions, found again by subscriber and channel on every run.
DEMO_SUBSCRIBERS = {
    "webhook": "iotmon demo: signed webhook",
    "slack": "iotmon demo: Slack, critical perceived temperature",
    "email": "iotmon demo: e-mail, at most 5 a minute",
}
DEMO_MAILBOX = "safety@plant.example"
DEMO_MAX_PER_MINUTE = 5  # the e-mail subscription's rate limit: the rest go out as a digest
SHOWN_TEXTS = 3  # message texts printed per receiver
DELIVERY_WAIT_S = 75.0  # after the pipeline, for the rate limit's minute and its digest


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_file: Path


def _iotmon(*args: str) -> list[str]:
    return [sys.executable, "-m", "iotmon", *args]


def start_children(settings: Settings, extra_env: dict[str, str] | None = None) -> list[Child]:
    logs = settings.stack.state_dir / "demo"
    logs.mkdir(parents=True, exist_ok=True)
    children = []
    env = {**os.environ, **(extra_env or {})}
    if not settings.api.tokens:
        env["IOTMON_API__TOKENS"] = f'{{"{DEMO_TOKEN}": "admin"}}'
        log.info("API write token for this demo: Authorization: Bearer %s", DEMO_TOKEN)
    log.info("API on http://%s:%d (docs at /docs)", settings.api.host, settings.api.port)
    for name, args in SERVICES.items():
        log_file = logs / f"{name}.log"
        with log_file.open("ab") as out:
            proc = subprocess.Popen(_iotmon(*args), stdout=out, stderr=subprocess.STDOUT, env=env)
        children.append(Child(name, proc, log_file))
        log.info("started %s (pid %d), log in %s", name, proc.pid, log_file)
    return children


def stop_children(children: list[Child]) -> None:
    for child in children:
        if child.proc.poll() is None:
            child.proc.terminate()
    for child in children:
        try:
            child.proc.wait(40)
        except subprocess.TimeoutExpired:
            child.proc.kill()


def live_simulator_args(simulate_args: list[str]) -> list[str]:
    """The simulator that keeps the board live after the demo's timed run: the same plant
    (sensor ids and places follow from ``--sensors`` alone), gateway and transport, in
    normal weather at wall-clock pace, with no end."""
    kept = {"--sensors", "--via", "--gateway"}
    found: list[str] = []
    args = iter(simulate_args)
    for arg in args:
        name, eq, value = arg.partition("=")
        if name in kept:
            found += [name, value if eq else next(args, "")]
    return [*found, "--no-register", "--no-progress"]


def keep_serving(
    settings: Settings, api: list[Child], wait: bool, others: list[Child] | None = None
) -> None:
    """Leave the API (and with it the dashboard) up after the simulation, with ``others``
    (the pipeline and a live simulator), until Ctrl-C or until the stack is stopped
    (`make down`), or the API exits; then stop them all."""
    try:
        host, _, port = settings.kafka.bootstrap_servers.split(",")[0].rpartition(":")
        if wait and all(c.proc.poll() is None for c in api):
            log.info(
                "dashboard still on http://%s:%d/ ; press Ctrl-C to stop the demo",
                settings.api.host,
                settings.api.port,
            )
            misses = 0
            while misses < 3 and all(c.proc.poll() is None for c in api):
                time.sleep(2)
                try:
                    socket.create_connection((host, int(port)), timeout=2).close()
                    misses = 0
                except OSError:
                    misses += 1  # the stack is going down
    except KeyboardInterrupt:
        pass
    finally:
        stop_children([*(others or []), *api])


def topic_offsets(settings: Settings, ids: list[TopicId]) -> dict[str, tuple[int, int]]:
    """Per topic, the sums over its partitions of the start and the end offsets: records
    kept are end minus start; records added between two calls, the difference of ends."""
    consumer = Consumer({**settings.kafka.client_config(), "group.id": "iotmon-demo-count"})
    offsets: dict[str, tuple[int, int]] = {}
    try:
        for topic_id in ids:
            name = topic_name(topic_id, settings.kafka.topic_prefix)
            meta = consumer.list_topics(name, timeout=10).topics[name]
            low_sum = high_sum = 0
            for p in meta.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
                low_sum, high_sum = low_sum + low, high_sum + high
            offsets[name] = (low_sum, high_sum)
    finally:
        consumer.close()
    return offsets


# -- deliveries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoSubscription:
    """One subscription of the demo (every scope field left open: any location)."""

    notify_type: str
    notify_id: str
    min_level: str = "warning"
    threshold_type: str | None = None
    secret: str | None = None
    max_per_minute: int | None = None

    @property
    def subscriber(self) -> str:
        return DEMO_SUBSCRIBERS[self.notify_type]


def demo_subscriptions(webhook: WebhookReceiver) -> list[DemoSubscription]:
    """A signed webhook for every alert and Slack for critical perceived temperatures, both
    without a rate limit, and e-mail for every alert at most :data:`DEMO_MAX_PER_MINUTE` a
    minute (the rest as digests)."""
    return [
        DemoSubscription("webhook", webhook.webhook_url, secret=webhook.secret, max_per_minute=0),
        DemoSubscription(
            "slack",
            webhook.slack_url,
            min_level="critical",
            threshold_type="pcv_temperature",
            max_per_minute=0,
        ),
        DemoSubscription("email", DEMO_MAILBOX, max_per_minute=DEMO_MAX_PER_MINUTE),
    ]


def _connect(db: DatabaseSettings) -> psycopg.Connection[Any]:
    conn = psycopg.connect(db.url, autocommit=True)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(db.db_schema)))
    return conn


def _has_column(conn: psycopg.Connection[Any], table: str, column: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = %s AND column_name = %s",
        (table, column),
    ).fetchone()
    return row is not None


def ensure_subscriptions(db: DatabaseSettings, subs: list[DemoSubscription]) -> dict[str, int]:
    """Create the demo's subscriptions, or point the existing ones (same subscriber and
    channel) at this run's targets and enable them; returns their ids by channel.

    ``max_per_minute`` is set where the database has the column (migration 015)."""
    ids: dict[str, int] = {}
    with _connect(db) as conn, conn.transaction():
        # Two demos starting at once would otherwise both insert.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('iotmon demo subscriptions'))")
        limits = _has_column(conn, "alert_subscriptions", "max_per_minute")
        if not limits:
            log.info("this database has no rate limits yet (migration 015): no digest shown")
        for sub in subs:
            values: dict[str, Any] = {
                "notify_id": sub.notify_id,
                "min_level": sub.min_level,
                "threshold_type": sub.threshold_type,
                "secret": sub.secret,
                "enabled": True,
            }
            if limits:
                values["max_per_minute"] = sub.max_per_minute
            row = conn.execute(
                "SELECT subscription_id FROM alert_subscriptions"
                " WHERE subscriber = %s AND notify_type = %s ORDER BY subscription_id LIMIT 1",
                (sub.subscriber, sub.notify_type),
            ).fetchone()
            if row is not None:
                conn.execute(
                    sql.SQL(
                        "UPDATE alert_subscriptions SET {}, updated_at = now()"
                        " WHERE subscription_id = %s"
                    ).format(
                        sql.SQL(", ").join(
                            sql.SQL("{} = %s").format(sql.Identifier(k)) for k in values
                        )
                    ),
                    [*values.values(), row[0]],
                )
                ids[sub.notify_type] = row[0]
                continue
            values |= {"subscriber": sub.subscriber, "notify_type": sub.notify_type}
            created = conn.execute(
                sql.SQL(
                    "INSERT INTO alert_subscriptions ({}) VALUES ({}) RETURNING subscription_id"
                ).format(
                    sql.SQL(", ").join(sql.Identifier(k) for k in values),
                    sql.SQL(", ").join(sql.Placeholder() * len(values)),
                ),
                list(values.values()),
            ).fetchone()
            assert created is not None  # RETURNING of an INSERT
            ids[sub.notify_type] = created[0]
    return ids


def disable_subscriptions(db: DatabaseSettings, ids: list[int]) -> None:
    """The demo's targets are gone: its subscriptions notify no one until the next demo."""
    with _connect(db) as conn:
        conn.execute(
            "UPDATE alert_subscriptions SET enabled = false, updated_at = now()"
            " WHERE subscription_id = ANY(%s)",
            (ids,),
        )


def last_notification_id(db: DatabaseSettings) -> int:
    with _connect(db) as conn:
        row = conn.execute("SELECT coalesce(max(notification_id), 0) FROM notifications").fetchone()
    return int(row[0]) if row else 0


def notifications_since(db: DatabaseSettings, after_id: int) -> dict[tuple[str, str], int]:
    """Rows of the notification log written after ``after_id``, counted by (channel,
    status)."""
    with _connect(db) as conn:
        rows = conn.execute(
            "SELECT notify_type, status, count(*) FROM notifications"
            " WHERE notification_id > %s GROUP BY 1, 2 ORDER BY 1, 2",
            (after_id,),
        ).fetchall()
    return {(channel, status): n for channel, status, n in rows}


def owed(db: DatabaseSettings, after_id: int, subscription_ids: list[int]) -> int:
    """Notifications of this run to these subscriptions not sent or failed yet."""
    with _connect(db) as conn:
        row = conn.execute(
            "SELECT count(*) FROM notifications WHERE notification_id > %s"
            " AND subscription_id = ANY(%s) AND status IN ('PENDING', 'RETRYING')",
            (after_id, subscription_ids),
        ).fetchone()
    return int(row[0]) if row else 0


def messages_since(db: DatabaseSettings, after_id: int) -> dict[str, int]:
    """Messages that carried the SENT notifications written after ``after_id``, by channel:
    fewer than the notifications where digests carried several (``sent_as``, migration 015;
    empty without it)."""
    with _connect(db) as conn:
        if not _has_column(conn, "notifications", "sent_as"):
            return {}
        rows = conn.execute(
            "SELECT notify_type, count(DISTINCT sent_as) FROM notifications"
            " WHERE notification_id > %s AND status = 'SENT' GROUP BY 1",
            (after_id,),
        ).fetchall()
    return {channel: n for channel, n in rows}


def give_up_owed(db: DatabaseSettings, subscription_ids: list[int]) -> int:
    """Mark what the demo's subscriptions are still owed FAILED: their receivers are gone
    (this run's, or a killed run's), and the next run has new ones.  Returns the count."""
    with _connect(db) as conn:
        cur = conn.execute(
            "UPDATE notifications SET status = 'FAILED', updated_at = now(),"
            " fail_reason = 'the demo that owed it ended before it was sent'"
            " WHERE subscription_id = ANY(%s) AND status IN ('PENDING', 'RETRYING')",
            (subscription_ids,),
        )
        return cur.rowcount


def wait_for_deliveries(
    db: DatabaseSettings, after_id: int, subscription_ids: list[int], timeout_s: float
) -> None:
    """Wait (at most ``timeout_s``) until the notifier owes the demo's receivers nothing of
    this run: a rate limit holds messages back for up to a minute, then sends a digest."""
    deadline = time.monotonic() + timeout_s
    left = owed(db, after_id, subscription_ids)
    if left:
        log.info(
            "waiting up to %.0f s until the notifier owes the demo's receivers nothing"
            " (%d owed now, more as the last alerts come in; a rate limit holds some back"
            " for a digest)",
            timeout_s,
            left,
        )
    while left and time.monotonic() < deadline:
        time.sleep(1)
        left = owed(db, after_id, subscription_ids)


def start_notifier_at_the_end(settings: Settings, group: str) -> None:
    """Commit ``group``'s offsets at the end of the alerts topic: its notifier then tells of
    the alerts raised from now on, not of every earlier run's."""
    name = topic_name("alerts", settings.kafka.topic_prefix)
    consumer = Consumer(
        {**settings.kafka.client_config(), "group.id": group, "enable.auto.commit": False}
    )
    try:
        meta = consumer.list_topics(name, timeout=10).topics[name]
        ends = []
        for p in meta.partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
            ends.append(TopicPartition(name, p, high))
        if ends:
            consumer.commit(offsets=ends, asynchronous=False)
    except KafkaException as exc:
        log.warning(
            "could not move %s to the end of %s (%s): earlier alerts may be sent", group, name, exc
        )
    finally:
        consumer.close()


def _first_line(text: str, width: int = 150) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def report_deliveries(
    webhook: WebhookReceiver,
    smtp: SmtpSink,
    log_rows: dict[tuple[str, str], int],
    messages: dict[str, int] | None = None,
) -> None:
    """What each receiver got (count, signature, the first texts) and the log's rows by
    channel and status (with the messages that carried the SENT ones, when known)."""
    hooks = webhook.got("webhook")
    verified = "yes" if hooks and all(d.verified for d in hooks) else "no"
    _report(
        f"webhook {webhook.webhook_url}: {len(hooks)} received, signature verified: "
        f"{verified if hooks else '-'}, {webhook.refused('webhook')} refused (bad signature)",
        hooks,
    )
    slack = webhook.got("slack")
    _report(f"slack   {webhook.slack_url}: {len(slack)} received (unsigned)", slack)
    mails = smtp.got()
    _report(f"e-mail  smtp://{smtp.host}:{smtp.port}: {len(mails)} received", mails)
    if not log_rows:
        log.info("notifications of this run: none")
        return
    by_channel: dict[str, list[str]] = {}
    for (channel, status), n in log_rows.items():
        by_channel.setdefault(channel, []).append(f"{status} {n}")
    for channel, counts in by_channel.items():
        carried = (messages or {}).get(channel)
        sent = log_rows.get((channel, "SENT"), 0)
        sent_in = f" (sent as {carried} messages: digests)" if carried and carried < sent else ""
        log.info("notifications of this run  %-8s %s%s", channel, ", ".join(counts), sent_in)


def _report(headline: str, got: list[Delivery]) -> None:
    """The headline, the first few texts and, after them, the last one (a digest, if the
    rate limit sent one, comes late)."""
    log.info("delivered  %s", headline)
    for delivery in got[:SHOWN_TEXTS]:
        to = f" (to {delivery.recipient})" if delivery.recipient else ""
        log.info("    %s%s", _first_line(delivery.text), to)
    if len(got) > SHOWN_TEXTS:
        log.info("    … %d more; the last: %s", len(got) - SHOWN_TEXTS, _first_line(got[-1].text))


def _interrupt(signum: int, _frame: object) -> None:
    log.info("%s: stopping the demo and what it started", signal.Signals(signum).name)
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def stopped_like_ctrl_c() -> Iterator[None]:
    """SIGTERM and SIGHUP (a closed terminal, `kill`) stop the demo the way Ctrl-C does, so
    that its background services and simulators are stopped with it, never orphaned."""
    kept = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in kept.items():
            signal.signal(s, handler)


def run_demo(settings: Settings, simulate_args: list[str]) -> int:
    """Run the demo; returns the simulator's exit code."""
    with stopped_like_ctrl_c():
        return _run_demo(settings, simulate_args)


def _run_demo(settings: Settings, simulate_args: list[str]) -> int:
    log.info(
        "dashboard: http://%s:%d/ (stays up after the simulation until Ctrl-C or `make down`)",
        settings.api.host,
        settings.api.port,
    )
    with demo_receivers(secrets.token_urlsafe(24)) as (webhook, smtp):
        ids = ensure_subscriptions(settings.db, demo_subscriptions(webhook))
        try:
            give_up_owed(settings.db, list(ids.values()))  # left by a run that was killed
            after_id = last_notification_id(settings.db)
            start_notifier_at_the_end(settings, DEMO_NOTIFIER_GROUP)
            log.info(
                "deliveries: webhook %s, Slack %s, e-mail to %s via SMTP %s:%d",
                webhook.webhook_url,
                webhook.slack_url,
                DEMO_MAILBOX,
                smtp.host,
                smtp.port,
            )
            notifier_env = {
                "IOTMON_NOTIFIER__GROUP_ID": DEMO_NOTIFIER_GROUP,
                "IOTMON_NOTIFIER__SMTP_HOST": smtp.host,
                "IOTMON_NOTIFIER__SMTP_PORT": str(smtp.port),
                "IOTMON_NOTIFIER__SMTP_STARTTLS": "false",  # the local sink speaks no TLS
            }
            return _run_pipeline(
                settings, simulate_args, notifier_env, after_id, list(ids.values()), webhook, smtp
            )
        finally:
            disable_subscriptions(settings.db, list(ids.values()))


def _run_pipeline(
    settings: Settings,
    simulate_args: list[str],
    env: dict[str, str],
    after_id: int,
    subscription_ids: list[int],
    webhook: WebhookReceiver,
    smtp: SmtpSink,
) -> int:
    """Start the children, simulate, report, and keep everything up until stopped.  Whatever
    ends it (the end, Ctrl-C, a signal during the report or a second one), every child it
    started is stopped on the way out."""
    before = topic_offsets(settings, DEMO_TOPICS)
    children: list[Child] = []
    try:
        children.extend(start_children(settings, env))
        time.sleep(3)  # let the bridge subscribe before gateways publish
        for child in children:
            if child.proc.poll() is not None:
                log.error("%s exited early; see %s", child.name, child.log_file)
                return 1
        if not any(a.startswith("--gateway") for a in simulate_args):
            local_gateway(settings, DEMO_GATEWAY)
            simulate_args = ["--gateway", DEMO_GATEWAY, *simulate_args]
        simulated = subprocess.call(_iotmon("simulate", *simulate_args))
        time.sleep(5)  # let the last readings through the pipeline
        # The notifier gets a while to send what it owes (digests included) before the
        # report.  Then everything stays up for the live board.
        if all(c.proc.poll() is None for c in children if c.name == "notifier"):
            wait_for_deliveries(settings.db, after_id, subscription_ids, DELIVERY_WAIT_S)
        for name, (low, high) in topic_offsets(settings, DEMO_TOPICS).items():
            added = high - before.get(name, (0, 0))[1]
            log.info(
                "topic %-40s %8d records in this run (%d kept in the topic)",
                name,
                added,
                high - low,
            )
        report_deliveries(
            webhook,
            smtp,
            notifications_since(settings.db, after_id),
            messages_since(settings.db, after_id),
        )
        if simulated == 0:
            children.append(live_simulator(settings, simulate_args))
        keep_serving(
            settings,
            [c for c in children if c.name == "api"],
            wait=True,
            others=[c for c in children if c.name != "api"],
        )
        return simulated
    except KeyboardInterrupt:
        return 130
    finally:
        # Not to be cut short by one more Ctrl-C or signal: that would orphan the children.
        with signals_ignored():
            stop_children(children)
            give_up(settings.db, subscription_ids)


@contextmanager
def signals_ignored() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP ignored for a while (the demo's last clean-up)."""
    kept = {
        s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for s, handler in kept.items():
            signal.signal(s, handler)


def give_up(db: DatabaseSettings, subscription_ids: list[int]) -> None:
    """What the notifier still owes the demo's receivers when they go: marked FAILED."""
    if left := give_up_owed(db, subscription_ids):
        log.info("%d notifications to the demo's receivers were not sent in time", left)


def live_simulator(settings: Settings, simulate_args: list[str]) -> Child:
    """Start the simulator that keeps the board live after the timed run (see
    live_simulator_args); its log goes next to the services' logs."""
    args = live_simulator_args(simulate_args)
    log_file = settings.stack.state_dir / "demo" / "simulate-live.log"
    with log_file.open("ab") as out:
        proc = subprocess.Popen(_iotmon("simulate", *args), stdout=out, stderr=subprocess.STDOUT)
    log.info(
        "the board stays live: the simulated gateways go on reporting in normal weather"
        " (iotmon simulate %s, pid %d, log in %s)",
        " ".join(args),
        proc.pid,
        log_file,
    )
    return Child("simulate", proc, log_file)
