"""Thresholds: bands per metric that decide a reading's status."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.common import Metric, Status

Level = Literal[
    "green", "yellow", "orange", "red", "low", "medium", "high", "critical", "warning", "info"
]

# The original system's mapping, made the one rule for realtime status and alert matching.
LEVEL_STATUS: dict[str, Status] = {
    "green": Status.NORMAL,
    "low": Status.NORMAL,
    "info": Status.NORMAL,
    "yellow": Status.WARNING,
    "high": Status.WARNING,
    "medium": Status.WARNING,
    "warning": Status.WARNING,
    "orange": Status.CRITICAL,
    "red": Status.CRITICAL,
    "critical": Status.CRITICAL,
}

# Priority when several bands match (higher wins).
LEVEL_PRIORITY: dict[str, int] = {
    "critical": 4,
    "red": 4,
    "orange": 4,
    "high": 3,
    "yellow": 3,
    "medium": 2,
    "warning": 2,
    "low": 1,
    "green": 1,
    "info": 0,
}


class Threshold(BaseModel):
    """One band.  ``min_value``/``max_value`` are inclusive; ``None`` is an open bound.

    Scope fields narrow the band to a factory, building, floor or location; ``None`` means any.
    """

    model_config = ConfigDict(extra="forbid")

    threshold_id: int
    threshold_type: Metric
    level: Level
    min_value: Decimal | None = None
    max_value: Decimal | None = None
    factory: str | None = None
    building: str | None = None
    floor: int | None = None
    loc_id: str | None = None
    hold_seconds: int = Field(60, ge=0)
    clear_seconds: int = Field(60, ge=0)
    clear_margin: Decimal = Field(Decimal(0), ge=0)
    upd_dt: datetime

    @model_validator(mode="after")
    def _bounds(self) -> Threshold:
        if (
            self.min_value is not None
            and self.max_value is not None
            and self.max_value <= self.min_value
        ):
            raise ValueError("max_value must be greater than min_value")
        return self


class ThresholdRecord(BaseModel):
    """The compacted thresholds topic, keyed by threshold id; ``deleted`` removes it."""

    threshold: Threshold
    deleted: bool = False
