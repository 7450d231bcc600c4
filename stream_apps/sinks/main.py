"""Composition root of the sinks (`iotmon sink`): one runner (consumer group, connection and
thread) per sink."""

from __future__ import annotations

import threading
from typing import Any

from confluent_kafka import Consumer
from prometheus_client import CollectorRegistry

from iotmon.runtime import settle_heap
from iotmon.settings import Settings
from producers.kafka import dead_letter_payload_limit, make_producer
from schemas.topics import TOPICS, TopicId, topic_name
from stream_apps.sinks.aggregates import AggregatesWriter
from stream_apps.sinks.alerts import AlertsWriter
from stream_apps.sinks.latest import LatestWriter
from stream_apps.sinks.readings import ReadingsWriter
from stream_apps.sinks.runner import SinkMetrics, SinkRunner, SinkWriter

WRITERS: dict[str, tuple[TopicId, type[Any]]] = {
    "readings": ("readings", ReadingsWriter),
    "aggregates": ("aggregates_hourly", AggregatesWriter),
    "latest": ("latest", LatestWriter),
    "alerts": ("alerts", AlertsWriter),
}


# The sink whose rows the realtime view shows.  When the API takes the values of the
# realtime answers from the latest topic itself (IOTMON_API__REALTIME_FROM_TOPIC, the
# default), those rows only decide which sensors an answer holds, and this sink batches
# like the others.  The others write history, where a quarter of a second does not show:
# they take bigger batches, so fewer fetches, transactions and offset commits per record
# (see docs/performance.md).
REALTIME = frozenset({"latest"})
HISTORY_FETCH_MIN_BYTES = 1024 * 1024  # the broker answers a history sink's fetch at 1 MiB ...


def build(settings: Settings, name: str, metrics: SinkMetrics) -> SinkRunner[Any]:
    topic_id, writer_cls = WRITERS[name]
    writer: SinkWriter[Any] = writer_cls()
    sink = settings.sink
    realtime = name in REALTIME and not settings.api.realtime_from_topic
    linger = sink.poll_linger_s if realtime else sink.history_linger_s
    fetch = (
        {}
        if realtime
        else {  # ... or after the linger, whichever comes first
            "fetch.min.bytes": HISTORY_FETCH_MIN_BYTES,
            "fetch.wait.max.ms": max(1, round(linger * 1000)),
        }
    )
    consumer = Consumer(
        {
            **settings.kafka.client_config(),
            "group.id": f"{settings.sink.group_prefix}-{name}",
            "client.id": f"{settings.kafka.client_id}-sink-{name}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # A database outage pauses the sink without polling; stay in the group meanwhile.
            "max.poll.interval.ms": 900_000,
            **fetch,
        }
    )
    prefix = settings.kafka.topic_prefix
    return SinkRunner(
        consumer,
        make_producer(settings.kafka, **{"client.id": f"{settings.kafka.client_id}-sink-{name}"}),
        topic_name(topic_id, prefix),
        topic_name("dead_letters", prefix),
        settings.db.url,
        settings.db.db_schema,
        writer,
        metrics,
        compacted=TOPICS[topic_id].cleanup_policy == "compact",
        dead_letter_max_payload=dead_letter_payload_limit(settings.kafka),
        poll_max_messages=sink.poll_max_messages,
        poll_timeout_s=sink.poll_timeout_s,
        poll_linger_s=linger,
        commit_every_s=sink.commit_every_s,
        max_backoff_s=sink.max_backoff_s,
    )


def run(
    settings: Settings, names: list[str], stop: threading.Event, registry: CollectorRegistry
) -> None:
    """Run the named sinks until ``stop``; an exception in one stops all (then re-raised)."""
    metrics = SinkMetrics(registry)
    runners = [build(settings, name, metrics) for name in names]
    settle_heap()
    errors: list[BaseException] = []

    def serve(runner: SinkRunner[Any]) -> None:
        try:
            runner.run(stop)
        except BaseException as exc:
            errors.append(exc)
            stop.set()
            raise
        finally:
            runner.consumer.close()

    threads = [threading.Thread(target=serve, args=(r,), name=r.writer.name) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
