"""Hourly aggregates into ``hourly_aggregates``: one row per sensor and local hour.

The stream processor publishes provisional aggregates of an open hour as it fills and a final
one when the hour closes.  A record ranks by ``(is_final, updated_at)`` and replaces the stored
row only if it ranks at least as high: a final row is never overwritten by a provisional one,
and a provisional row only by a final or by a provisional with a greater-or-equal
``updated_at``.  Replaying any part of the topic therefore leaves every row as it was, and a
record that arrives late (after a newer one) changes nothing.

A batch is reduced to the highest-ranked record per key in Python, COPied into a temporary
table and applied with one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE``; rows whose values
would not change are not rewritten (so a replay reports 0 rows changed).  In the same
transaction the floor rollup (``floor_hourly``, migration 007) is recomputed for the
floor-hours the batch touched.  After the commit, a batch with hours of an earlier UTC day
brings the daily and monthly rollups of those months up to date (``iotmon.db.rollups``,
migration 012; nothing to do on plain PostgreSQL), so the API's day and month buckets answer
with it at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from iotmon.db import rollups
from schemas.aggregates import HourlyAggregate, MetricAggregate
from schemas.common import METRICS
from stream_apps.common.unavailable import connection_lost
from stream_apps.sinks.upsert import GuardedUpsert

log = logging.getLogger(__name__)

_KEY = ("sensor_id", "hour_start")
_METRIC_PARTS = ("count", "sum", "min", "max")
_VALUES = (
    "loc_id",
    "ymd",
    "hour",
    *(f"{metric}_{part}" for metric in METRICS for part in _METRIC_PARTS),
    "is_final",
    "updated_at",
)


_TABLE = GuardedUpsert("hourly_aggregates", _KEY, _VALUES, ("is_final", "updated_at"))
_COPY = _TABLE.copy()
_UPSERT = _TABLE.upsert()
# The staging table still holds the batch: its floor-hours, recomputed.
_REFRESH_FLOORS = sql.SQL(
    "SELECT refresh_floor_hourly_for(array_agg(loc_id), array_agg(hour_start)) FROM {}"
).format(sql.Identifier(_TABLE.staging))


def earlier_days(
    records: Iterable[HourlyAggregate], now: datetime
) -> tuple[datetime, datetime] | None:
    """The first and last hour of ``records`` before the current UTC day (whose rollups may
    be materialized already), or None."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    hours = [r.hour_start for r in records if r.hour_start < today]
    return (min(hours), max(hours)) if hours else None


def rank(record: HourlyAggregate) -> tuple[bool, datetime]:
    """What decides which of two records of one sensor and hour wins: final beats
    provisional, then the later ``updated_at``."""
    return (record.is_final, record.updated_at)


def winners(records: Iterable[HourlyAggregate]) -> list[HourlyAggregate]:
    """The highest-ranked record per (sensor, hour); on a tie the one that came later."""
    best: dict[tuple[str, datetime], HourlyAggregate] = {}
    for record in records:
        key = (record.sensor_id, record.hour_start)
        current = best.get(key)
        if current is None or rank(record) >= rank(current):
            best[key] = record
    return list(best.values())


def _metric(
    agg: MetricAggregate | None,
) -> tuple[int, Decimal | None, Decimal | None, Decimal | None]:
    if agg is None:
        return (0, None, None, None)
    return (agg.count, agg.sum, agg.min, agg.max)


def _row(record: HourlyAggregate) -> tuple[Any, ...]:
    return (
        record.sensor_id,
        record.hour_start,
        record.loc_id,
        record.ymd,
        record.hour,
        *_metric(record.temperature),
        *_metric(record.humidity),
        *_metric(record.pcv_temperature),
        record.is_final,
        record.updated_at,
    )


class AggregatesWriter:
    name = "aggregates"
    model = HourlyAggregate

    def write(self, conn: psycopg.Connection[Any], records: Sequence[HourlyAggregate]) -> int:
        """Upsert the winning record of each key (caller owns the transaction); returns the
        number of rows inserted or changed."""
        with conn.cursor() as cur:
            cur.execute(_TABLE.create_staging())
            with cur.copy(_COPY) as copy:
                for record in winners(records):
                    copy.write_row(_row(record))
            cur.execute(_UPSERT)
            changed = cur.rowcount
            cur.execute(_REFRESH_FLOORS)
            return changed

    def after_commit(
        self, conn: psycopg.Connection[Any], records: Sequence[HourlyAggregate]
    ) -> None:
        """Refresh the rollups of the months of earlier days the batch wrote ("earlier" by
        the database's clock, the same for every replica).  Only a lost connection is raised:
        the runner reconnects and writes the batch again (idempotent), then refreshes.
        Anything else (a refresh elsewhere that outlasts the wait, a missing right, a record
        this cannot read) is logged and left to the rollups' refresh policy: the rows are
        committed, so neither the batch nor a record of it is bad."""
        span = None
        try:
            conn.autocommit = True
            row = conn.execute("SELECT now()").fetchone()
            span = earlier_days(records, row[0] if row else datetime.now(UTC))
            if span is not None:
                rollups.refresh(conn, *span)
        except Exception as exc:  # see above: only a lost connection is raised
            if conn.closed or (isinstance(exc, psycopg.Error) and connection_lost(exc)):
                raise
            log.warning(
                "daily and monthly rollups%s not refreshed (their refresh policy will): %s",
                f" of {span[0].date()}..{span[1].date()}" if span else "",
                exc,
            )
        finally:
            if not conn.closed:
                conn.autocommit = False
