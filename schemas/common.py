"""Types shared by several event families."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

Metric = Literal["temperature", "humidity", "pcv_temperature"]
METRICS: tuple[Metric, ...] = ("temperature", "humidity", "pcv_temperature")

DEFAULT_TIMEZONE = "Asia/Seoul"


class Status(StrEnum):
    """The single status scale of the original system."""

    NORMAL = "normal"
    WARNING = "warning"
    CRITICAL = "critical"
