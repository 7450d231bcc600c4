"""Sensor readings: what gateways send, what the pipeline passes on, and dead letters."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.common import Status
from schemas.master import SENSOR_ID_PATTERN

Source = Literal["mqtt", "kafka"]


DecimalString = Annotated[str, Field(pattern=r"^\s*[-+]?[0-9]+(\.[0-9]+)?\s*$")]
Number = Annotated[float | DecimalString, Field(description="a JSON number or a decimal string")]
CaptureTime = Annotated[
    str,
    Field(
        description=(
            "ISO-8601 time of the measurement, e.g. 2025-09-12T05:59:38.837Z; "
            "without an offset it is read in the factory's time zone (default Asia/Seoul)"
        ),
        examples=["2025-09-12T05:59:38.837Z", "2025-09-12 14:59:38"],
    ),
]


class ReadingPayload(BaseModel):
    """The JSON object a gateway publishes for one reading (the documented wire format).

    A JSON array of such objects is a batch.  See docs/wire-format.md.
    """

    model_config = ConfigDict(
        extra="allow",
        title="Sensor reading",
        json_schema_extra={
            "examples": [
                {
                    "sensor_id": "TEMPIOT-A011",
                    "capture_dt": "2025-09-12T05:59:38.837Z",
                    "temperature": 22.1,
                    "humidity": 77.7,
                    "pcv_temperature": 23.8,
                }
            ]
        },
    )

    sensor_id: str = Field(pattern=SENSOR_ID_PATTERN)
    capture_dt: CaptureTime
    temperature: Number = Field(description="air temperature, °C")
    humidity: Number = Field(description="relative humidity, %")
    pcv_temperature: Number | None = Field(
        None, description="perceived temperature, °C; computed when absent"
    )


class OriginalRowPayload(BaseModel):
    """The original system's row format, accepted so its gateways switch over unchanged."""

    model_config = ConfigDict(extra="allow", title="Sensor reading (original row format)")

    sensor_id: str = Field(pattern=SENSOR_ID_PATTERN)
    capture_dt: CaptureTime
    t1: Number = Field(description="temperature, °C")
    t2: Number = Field(description="relative humidity, %")
    t3: Number | None = Field(None, description="perceived temperature, °C")


class Reading(BaseModel):
    """A validated reading, enriched with its location; values are exact decimals."""

    model_config = ConfigDict(frozen=True)

    sensor_id: str
    loc_id: str
    capture_dt: datetime  # aware, UTC
    temperature: Decimal
    humidity: Decimal
    pcv_temperature: Decimal | None
    pcv_computed: bool = False
    source: Source
    received_at: datetime


class ReadingBatch(BaseModel):
    """Validated readings that share one partition of the readings topic.

    One Kafka record carries many readings so that stream processing pays its per-event cost
    once per batch, not once per reading.  Every reading in a batch hashes (murmur2 of its
    sensor id) to the partition the batch was written to.

    A record with ``tick_at`` set and no readings is a clock tick of the stream processor:
    written into every partition so that closing hours and detecting silent sensors happen
    in the partition's own order (deterministic on replay).  Other consumers ignore it.
    """

    readings: list[Reading] = Field(default_factory=list)
    tick_at: datetime | None = None


class SensorStatus(BaseModel):
    """The latest reading of a sensor with the status of each metric (``None``: the metric
    has no thresholds).  Carried by the compacted latest-status topic."""

    sensor_id: str
    loc_id: str
    capture_dt: datetime
    temperature: Decimal
    humidity: Decimal
    pcv_temperature: Decimal | None
    pcv_computed: bool
    temperature_status: Status | None
    humidity_status: Status | None
    pcv_temperature_status: Status | None
    updated_at: datetime


class IngressHeaders:
    """Headers the MQTT bridge sets on each raw record."""

    MQTT_TOPIC = "mqtt.topic"
    RECEIVED_AT = "received_at"  # ISO-8601 UTC instant the bridge received the message
    GATEWAY = "gateway"  # MQTT client id / gateway name when the topic names one
    SOURCE = "source"
