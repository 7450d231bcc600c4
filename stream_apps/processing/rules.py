"""Threshold evaluation: the original system's rule, made the single rule of the platform.

A band matches when ``min <= value <= max`` (both inclusive; a missing bound is open).  The
highest-priority matching band gives the status; no match is ``normal``; a metric without
any band is ``None``.  A band may be scoped to a factory, building, floor or location: the
most specific scope that has bands for the metric wins, global otherwise.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from schemas.common import METRICS, Metric, Status
from schemas.master import Location
from schemas.thresholds import LEVEL_PRIORITY, LEVEL_STATUS, Threshold

STATUS_RANK = {Status.NORMAL: 0, Status.WARNING: 1, Status.CRITICAL: 2}


@dataclass(frozen=True)
class Evaluation:
    status: Status | None
    band: Threshold | None  # the band that decided (None: normal by no match, or no bands)


def specificity(t: Threshold) -> int:
    """4 location, 3 floor, 2 building, 1 factory, 0 global."""
    if t.loc_id is not None:
        return 4
    if t.floor is not None:
        return 3
    if t.building is not None:
        return 2
    if t.factory is not None:
        return 1
    return 0


def in_scope(t: Threshold, location: Location | None) -> bool:
    if specificity(t) == 0:
        return True
    if location is None:
        return False
    return (
        (t.loc_id is None or t.loc_id == location.loc_id)
        and (t.factory is None or t.factory == location.factory)
        and (t.building is None or t.building == location.building)
        and (t.floor is None or t.floor == location.floor)
    )


_NO_BANDS = Evaluation(None, None)
_NORMAL = Evaluation(Status.NORMAL, None)


@dataclass(frozen=True)
class BandSet:
    """The bands in force for one metric and place, in decision order: highest priority
    first; among equals the narrower band, then the lower id.  The first band that matches
    decides, so the result never depends on the order thresholds were loaded in."""

    _ordered: tuple[tuple[Decimal | None, Decimal | None, Evaluation], ...]

    @staticmethod
    def of(bands: list[Threshold]) -> BandSet:
        ordered = sorted(bands, key=lambda t: (-LEVEL_PRIORITY[t.level], _width(t), t.threshold_id))
        return BandSet(
            tuple((t.min_value, t.max_value, Evaluation(LEVEL_STATUS[t.level], t)) for t in ordered)
        )

    def evaluate(self, value: Decimal | None) -> Evaluation:
        if not self._ordered or value is None:
            return _NO_BANDS
        for low, high, evaluation in self._ordered:
            if (low is None or low <= value) and (high is None or value <= high):
                return evaluation
        return _NORMAL


class ThresholdIndex:
    """Bands per metric, ready for evaluation; rebuilt when thresholds change."""

    def __init__(self, thresholds: Iterable[Threshold]) -> None:
        self.by_metric: dict[str, list[Threshold]] = defaultdict(list)
        for t in thresholds:
            self.by_metric[t.threshold_type].append(t)
        # Band sets per place; the index is rebuilt when thresholds change, and the key holds
        # every field of the place that scoping reads.
        self._sets: dict[tuple[object, ...] | None, tuple[BandSet, ...]] = {}

    def band_sets(self, location: Location | None) -> tuple[BandSet, ...]:
        """The band sets of every metric (in ``METRICS`` order) at this place."""
        key = (
            None
            if location is None
            else (location.loc_id, location.factory, location.building, location.floor)
        )
        found = self._sets.get(key)
        if found is None:
            found = self._sets[key] = tuple(
                BandSet.of(self._bands_for(metric, location)) for metric in METRICS
            )
        return found

    def _bands_for(self, metric: Metric, location: Location | None) -> list[Threshold]:
        """The bands of the most specific scope that has any for this metric and place."""
        candidates = [t for t in self.by_metric.get(metric, ()) if in_scope(t, location)]
        if not candidates:
            return []
        best = max(specificity(t) for t in candidates)
        return [t for t in candidates if specificity(t) == best]

    def evaluate(
        self, metric: Metric, value: Decimal | None, location: Location | None
    ) -> Evaluation:
        return self.band_sets(location)[METRICS.index(metric)].evaluate(value)


def _width(t: Threshold) -> Decimal:
    if t.min_value is None or t.max_value is None:
        return Decimal("Infinity")
    return t.max_value - t.min_value
