"""Independent computation of the expected hourly aggregates (no project code involved
beyond the models), used by unit and integration tests alike."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

from schemas.readings import Reading
from schemas.thresholds import Threshold
from stream_apps.processing.lifecycle import MetricAlertState, Subject, step
from stream_apps.processing.rules import ThresholdIndex

KST = ZoneInfo("Asia/Seoul")


def one_reading(capture: datetime, received: datetime) -> Reading:
    """One reading of TEMPIOT-A011 (25.0 °C, 50 %, no perceived temperature)."""
    return Reading(
        sensor_id="TEMPIOT-A011",
        loc_id="A011",
        capture_dt=capture,
        temperature=Decimal("25.0"),
        humidity=Decimal("50.0"),
        pcv_temperature=None,
        source="mqtt",
        received_at=received,
    )


def make_readings(
    sensors: int,
    hours: int,
    start: datetime,
    *,
    every_s: int = 60,
    seed: int = 1,
    duplicates: float = 0.05,
    shuffle_s: int = 300,
) -> list[Reading]:
    """Readings of ``sensors`` over ``hours`` from ``start``, in delivery order: shuffled
    within ``shuffle_s`` of capture time, with a share of duplicate deliveries."""
    rng = random.Random(seed)
    out: list[tuple[float, Reading]] = []
    for s in range(sensors):
        sid = f"TEMPIOT-G{s:03d}"
        for k in range(hours * 3600 // every_s):
            at = start + timedelta(seconds=k * every_s + rng.randint(0, every_s - 1))
            t = Decimal(rng.randint(150, 380)) / 10
            h = Decimal(rng.randint(300, 900)) / 10
            r = Reading(
                sensor_id=sid,
                loc_id=sid[-4:],
                capture_dt=at,
                temperature=t,
                humidity=h,
                pcv_temperature=t + Decimal("1.3"),
                source="kafka",
                received_at=at,
            )
            key = at.timestamp() + rng.uniform(0, shuffle_s)
            out.append((key, r))
            if rng.random() < duplicates:
                out.append((key + rng.uniform(0, shuffle_s), r))
    out.sort(key=lambda p: p[0])
    return [r for _, r in out]


def expected_hourly(readings: list[Reading]) -> dict[tuple[str, str, str], dict[str, object]]:
    """(sensor, ymd, hh) -> count and max/min/avg (2-decimal strings) per metric."""
    distinct = {(r.sensor_id, r.capture_dt): r for r in readings}
    groups: dict[tuple[str, str, str], list[Reading]] = defaultdict(list)
    for r in distinct.values():
        local = r.capture_dt.astimezone(KST)
        groups[(r.sensor_id, f"{local:%Y%m%d}", f"{local:%H}")].append(r)
    result: dict[tuple[str, str, str], dict[str, object]] = {}
    cent = Decimal("0.01")
    for key, rs in groups.items():
        doc: dict[str, object] = {"count": len(rs)}
        for metric in ("temperature", "humidity", "pcv_temperature"):
            values = [getattr(r, metric) for r in rs]
            doc[f"{metric}_max"] = str(max(values).quantize(cent, ROUND_HALF_UP))
            doc[f"{metric}_min"] = str(min(values).quantize(cent, ROUND_HALF_UP))
            doc[f"{metric}_avg"] = str((sum(values) / len(values)).quantize(cent, ROUND_HALF_UP))
        result[key] = doc
    return result


def hours_ago(n: int) -> datetime:
    now = datetime.now(UTC)
    return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=n)


def expected_alert_event_ids(readings: list[Reading], thresholds: list[Threshold]) -> set[str]:
    """The ids of every alert event the lifecycle decides for these readings, applied per
    sensor in delivery order (what any number of workers must produce, crash or not)."""
    index = ThresholdIndex(thresholds)
    states: dict[tuple[str, str], MetricAlertState] = {}
    ids: set[str] = set()
    for r in readings:
        for metric in ("temperature", "humidity", "pcv_temperature"):
            value = getattr(r, metric)
            state = states.setdefault((r.sensor_id, metric), MetricAlertState())
            events = step(
                state,
                Subject(r.sensor_id, r.loc_id, metric),
                index.evaluate(metric, value, None),
                value,
                r.capture_dt,
                r.capture_dt,
            )
            ids.update(str(e.event_id) for e in events)
    return ids
