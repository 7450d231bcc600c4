"""The topic registry: every Kafka topic of the system, declared once.

No other module spells a topic name; they ask :func:`topic_name` (which applies the
deployment's prefix) or iterate :data:`TOPICS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from schemas.aggregates import HourlyAggregate
from schemas.alerts import AlertEvent
from schemas.deadletters import DeadLetter
from schemas.master import SensorRecord
from schemas.readings import ReadingBatch, ReadingPayload, SensorStatus
from schemas.thresholds import ThresholdRecord

CleanupPolicy = Literal["delete", "compact"]
TopicId = Literal[
    "readings_raw",
    "readings_mqtt",
    "readings",
    "readings_late",
    "dead_letters",
    "sensors",
    "thresholds",
    "aggregates_hourly",
    "alerts",
    "latest",
]


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its base name, the model of its values, the key, partitions and cleanup.

    ``partitions=None`` takes the deployment's default; sensor-keyed topics must all share it
    so that a sensor's records land on the same partition number everywhere.
    """

    id: TopicId
    name: str
    model: type[BaseModel]
    key: str
    partitions: int | None
    cleanup_policy: CleanupPolicy
    retention_ms: int | None
    description: str
    max_message_bytes: int | None = None


_DAY_MS = 24 * 3600 * 1000
# Topics that must carry a payload of up to 1 MiB plus headers (rejected as too large
# downstream rather than refused by the broker, so the rejection is visible).
_LARGE = 2 * 1024 * 1024

TOPICS: dict[TopicId, TopicSpec] = {
    spec.id: spec
    for spec in (
        TopicSpec(
            "readings_raw",
            "iot.readings.raw",
            ReadingPayload,
            "sensor_id",
            None,
            "delete",
            7 * _DAY_MS,
            "Readings as gateways sent them (bytes unchanged), one per record.",
            _LARGE,
        ),
        TopicSpec(
            "readings_mqtt",
            "iot.readings.mqtt",
            ReadingPayload,
            "sensor_id",
            None,
            "delete",
            7 * _DAY_MS,
            "Readings bridged from MQTT (bytes unchanged). Only the bridge may write here, so "
            "ingest trusts the gateway its headers name; the raw topic's it does not.",
            _LARGE,
        ),
        TopicSpec(
            "readings",
            "iot.readings",
            ReadingBatch,
            "sensor_id",
            None,
            "delete",
            7 * _DAY_MS,
            "Validated, enriched readings, batched per partition.",
        ),
        TopicSpec(
            "readings_late",
            "iot.readings.late",
            ReadingBatch,
            "sensor_id",
            None,
            "delete",
            30 * _DAY_MS,
            "Readings that arrived after their hour's grace period.",
        ),
        TopicSpec(
            "dead_letters",
            "iot.readings.dlq",
            DeadLetter,
            "sensor_id",
            1,
            "delete",
            30 * _DAY_MS,
            "Rejected input: original bytes, reason in the headers.",
            _LARGE,
        ),
        TopicSpec(
            "sensors",
            "iot.master.sensors",
            SensorRecord,
            "sensor_id",
            1,
            "compact",
            None,
            "Sensors joined with their locations (master data).",
        ),
        TopicSpec(
            "thresholds",
            "iot.master.thresholds",
            ThresholdRecord,
            "threshold_id",
            1,
            "compact",
            None,
            "Threshold bands, keyed by threshold id.",
        ),
        TopicSpec(
            "aggregates_hourly",
            "iot.aggregates.hourly",
            HourlyAggregate,
            "sensor_id",
            None,
            "delete",
            30 * _DAY_MS,
            "Provisional and final hourly aggregates per sensor.",
        ),
        TopicSpec(
            "latest",
            "iot.readings.latest",
            SensorStatus,
            "sensor_id",
            None,
            "compact",
            None,
            "Latest reading of each sensor with its statuses.",
        ),
        TopicSpec(
            "alerts",
            "iot.alerts",
            AlertEvent,
            "sensor_id",
            None,
            "delete",
            30 * _DAY_MS,
            "Alert state changes (raised, escalated, de-escalated, resolved).",
        ),
    )
}


def topic_name(topic: TopicId, prefix: str = "") -> str:
    """The full name of a registered topic for a deployment with the given prefix."""
    return prefix + TOPICS[topic].name


def topic_config(spec: TopicSpec) -> dict[str, str]:
    """Broker-side configuration of a topic (for creating it)."""
    config: dict[str, str] = {"cleanup.policy": spec.cleanup_policy}
    if spec.retention_ms is not None:
        config["retention.ms"] = str(spec.retention_ms)
    if spec.max_message_bytes is not None:
        config["max.message.bytes"] = str(spec.max_message_bytes)
    return config
