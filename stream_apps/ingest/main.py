"""Composition root of the ingest stage (`iotmon ingest`)."""

from __future__ import annotations

import re
import threading
from datetime import timedelta

from confluent_kafka import Consumer
from prometheus_client import CollectorRegistry

from iotmon.runtime import settle_heap
from iotmon.settings import Settings
from producers.kafka import dead_letter_payload_limit, make_producer
from producers.masterdata import auto_register, import_master_data
from schemas.master import GATEWAY_PATTERN, SensorRecord
from schemas.topics import topic_name
from stream_apps.common.directory import SensorDirectory
from stream_apps.ingest.processor import IngestMetrics, IngestProcessor, IngestTopics
from stream_apps.ingest.validate import Limits


def limits_from(settings: Settings) -> Limits:
    s = settings.ingest
    return Limits(
        temperature=(s.temperature_min, s.temperature_max),
        humidity=(s.humidity_min, s.humidity_max),
        max_future=timedelta(seconds=s.max_future_s),
        max_age=timedelta(seconds=s.max_age_s),
        max_payload_bytes=s.max_payload_bytes,
        default_timezone=s.default_timezone,
        auto_register=s.auto_register,
        max_batch_items=s.max_batch_items,
    )


def build(settings: Settings, registry: CollectorRegistry) -> IngestProcessor:
    """The processor with its clients; reads the sensor directory before returning."""
    kafka = settings.kafka
    prefix = kafka.topic_prefix
    consumer = Consumer(
        {
            **kafka.client_config(),
            "group.id": settings.ingest.group_id,
            "client.id": f"{kafka.client_id}-ingest",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 52428800,
            "max.partition.fetch.bytes": 4 * 1024 * 1024,
        }
    )
    directory = SensorDirectory(kafka)
    directory.load()

    def register(sensor_id: str, gateway: str | None) -> SensorRecord:
        # A gateway level that is no account name (a custom topic) assigns nothing.
        if gateway is not None and not re.fullmatch(GATEWAY_PATTERN, gateway):
            gateway = None
        data = auto_register(sensor_id, gateway=gateway)
        records = import_master_data(settings.db, kafka, data, auto=True)
        return next(r for r in records if r.sensor.sensor_id == sensor_id)

    return IngestProcessor(
        consumer,
        make_producer(kafka),
        directory,
        limits_from(settings),
        IngestTopics(
            raw=topic_name("readings_raw", prefix),
            bridged=topic_name("readings_mqtt", prefix),
            readings=topic_name("readings", prefix),
            dead_letters=topic_name("dead_letters", prefix),
        ),
        IngestMetrics(registry),
        max_batch_readings=settings.ingest.max_batch_readings,
        poll_max_messages=settings.ingest.poll_max_messages,
        poll_timeout_s=settings.ingest.poll_timeout_s,
        poll_linger_s=settings.ingest.poll_linger_s,
        commit_every_s=settings.ingest.commit_every_s,
        registrar=register if settings.ingest.auto_register else None,
        dead_letter_max_payload=dead_letter_payload_limit(kafka),
    )


def run(settings: Settings, stop: threading.Event, registry: CollectorRegistry) -> None:
    processor = build(settings, registry)
    settle_heap()
    try:
        processor.run(stop)
    finally:
        processor.consumer.close()
        processor.directory.close()
