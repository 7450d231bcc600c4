"""Hourly aggregates per sensor, in the factory's local hours."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel


class MetricAggregate(BaseModel):
    """Exact running aggregate of one metric; ``avg`` is sum/count over raw readings."""

    count: int
    sum: Decimal
    min: Decimal
    max: Decimal


class HourlyAggregate(BaseModel):
    sensor_id: str
    loc_id: str
    hour_start: datetime  # aware; start of the local hour, as an instant
    ymd: str  # YYYYMMDD in the factory's time zone
    hour: str  # two digits, factory-local
    temperature: MetricAggregate | None
    humidity: MetricAggregate | None
    pcv_temperature: MetricAggregate | None
    is_final: bool
    updated_at: datetime
