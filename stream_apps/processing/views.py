"""What the worker looks up while it applies records: sensors' locations and thresholds.

:class:`MasterData` reads both compacted topics (:mod:`stream_apps.common.directory`, which
skips and logs records that do not decode) before the first record is applied, and applies
their changes before every batch of records.
"""

from __future__ import annotations

import logging
from typing import Protocol

from iotmon.settings import KafkaSettings
from schemas.master import Location
from stream_apps.common.directory import SensorDirectory, ThresholdDirectory
from stream_apps.processing.rules import ThresholdIndex

log = logging.getLogger(__name__)


class Views(Protocol):
    """What applying a record needs to know besides the record and the states."""

    @property
    def index(self) -> ThresholdIndex: ...

    def location(self, sensor_id: str) -> Location | None: ...


class MasterData:
    """:class:`Views` kept current from the sensors and thresholds topics.

    Nothing is read before :meth:`load`; :meth:`location` must not be called before it."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self.loaded = False
        self.index = ThresholdIndex(())
        self._index_version = -1

    def load(self) -> None:
        """Read both topics to their end (never evaluate before the thresholds are known);
        ``KafkaException`` if a topic is missing or unreachable."""
        self._sensors = SensorDirectory(self._kafka)
        self._thresholds = ThresholdDirectory(self._kafka)
        self._sensors.load()
        self._thresholds.load()
        self._reindex()
        self.loaded = True

    def refresh(self) -> None:
        """Apply the changes published since the last call (without waiting for any)."""
        self._sensors.refresh()
        self._thresholds.refresh()
        if self._thresholds.version != self._index_version:
            self._reindex()

    def location(self, sensor_id: str) -> Location | None:
        record = self._sensors.get(sensor_id)
        return record.location if record else None

    def _reindex(self) -> None:
        self.index = ThresholdIndex(self._thresholds.thresholds())
        self._index_version = self._thresholds.version
        log.debug("threshold index rebuilt (version %d)", self._index_version)
