"""The latest reading of each sensor, with its statuses, into ``latest_readings``.

A record replaces the stored row only if it is at least as recent, ranking by
``(capture_dt, updated_at)``: a reading captured earlier never overwrites a later one (so a
replay, or a partition read late, changes nothing), and for the same reading the later
evaluation wins (a status re-computed after a threshold change).

A batch is reduced to the most recent record per sensor in Python, COPied into a temporary
table and applied with one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE``; rows whose values
would not change are not rewritten.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import psycopg

from schemas.readings import SensorStatus
from stream_apps.sinks.upsert import GuardedUpsert

_VALUES = (
    "loc_id",
    "capture_dt",
    "temperature",
    "humidity",
    "pcv_temperature",
    "pcv_computed",
    "temperature_status",
    "humidity_status",
    "pcv_temperature_status",
    "updated_at",
)


_TABLE = GuardedUpsert("latest_readings", ("sensor_id",), _VALUES, ("capture_dt", "updated_at"))
_COPY = _TABLE.copy()
_UPSERT = _TABLE.upsert()


def rank(status: SensorStatus) -> tuple[datetime, datetime]:
    """Which of two records of one sensor is more recent."""
    return (status.capture_dt, status.updated_at)


def most_recent(records: Iterable[SensorStatus]) -> list[SensorStatus]:
    """The most recent record per sensor; on a tie the one that came later."""
    best: dict[str, SensorStatus] = {}
    for record in records:
        current = best.get(record.sensor_id)
        if current is None or rank(record) >= rank(current):
            best[record.sensor_id] = record
    return list(best.values())


class LatestWriter:
    name = "latest"
    model = SensorStatus

    def write(self, conn: psycopg.Connection[Any], records: Sequence[SensorStatus]) -> int:
        """Upsert the most recent record of each sensor (caller owns the transaction); returns
        the number of rows inserted or changed."""
        with conn.cursor() as cur:
            cur.execute(_TABLE.create_staging())
            with cur.copy(_COPY) as copy:
                for s in most_recent(records):
                    copy.write_row(
                        (
                            s.sensor_id,
                            s.loc_id,
                            s.capture_dt,
                            s.temperature,
                            s.humidity,
                            s.pcv_temperature,
                            s.pcv_computed,
                            s.temperature_status,
                            s.humidity_status,
                            s.pcv_temperature_status,
                            s.updated_at,
                        )
                    )
            cur.execute(_UPSERT)
            return cur.rowcount
