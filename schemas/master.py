"""Master data: locations and the sensors installed at them."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.common import DEFAULT_TIMEZONE

SENSOR_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
LOC_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"
GATEWAY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # an MQTT account name


class Location(BaseModel):
    """A place in a plant; fields of the original system plus its time zone."""

    model_config = ConfigDict(extra="forbid")

    loc_id: str = Field(pattern=LOC_ID_PATTERN)
    plant: str | None = None
    factory: str
    building: str | None = None
    floor: int | None = None
    area: str | None = None
    location_name: str | None = None
    is_active: bool = True
    timezone: str = DEFAULT_TIMEZONE

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        """An IANA zone name (``Asia/Seoul``); local days and hours are computed in it."""
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from None
        return value


class Sensor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sensor_id: str = Field(pattern=SENSOR_ID_PATTERN)
    loc_id: str = Field(pattern=LOC_ID_PATTERN)
    name: str | None = None
    is_active: bool = True
    # The gateway account that reports this sensor; readings of it from any other gateway
    # (or from none) are dead-lettered as wrong_gateway.  None: any source.
    gateway: str | None = Field(None, pattern=GATEWAY_PATTERN)


class SensorRecord(BaseModel):
    """What the master-data topic carries per sensor (compacted, keyed by sensor id).

    It joins a sensor with its location so that a stream application needs one lookup per
    reading.  ``deleted=True`` (or a tombstone) removes the sensor.
    """

    sensor: Sensor
    location: Location
    deleted: bool = False
    updated_at: datetime


def loc_id_by_convention(sensor_id: str) -> str:
    """The original system's rule: the location is the last 4 characters of the sensor id."""
    return sensor_id[-4:]
