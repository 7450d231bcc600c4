"""Raw readings into the ``readings`` table: COPY into a temporary table, then one
``INSERT ... ON CONFLICT DO NOTHING``.  A reading is identified by sensor id and capture
time, so a duplicate delivery (gateway retry, bridge redelivery, replay) is stored once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from schemas.readings import ReadingBatch


class ReadingsWriter:
    name = "readings"
    model = ReadingBatch

    def write(self, conn: psycopg.Connection[Any], records: Sequence[ReadingBatch]) -> int:
        with conn.cursor() as cur:
            cur.execute(
                "CREATE TEMP TABLE IF NOT EXISTS readings_in"
                " (LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            with cur.copy(
                "COPY readings_in (sensor_id, capture_dt, loc_id, temperature, humidity,"
                " pcv_temperature, pcv_computed, source, received_at) FROM STDIN"
            ) as copy:
                for batch in records:
                    for r in batch.readings:
                        copy.write_row(
                            (
                                r.sensor_id,
                                r.capture_dt,
                                r.loc_id,
                                r.temperature,
                                r.humidity,
                                r.pcv_temperature,
                                r.pcv_computed,
                                r.source,
                                r.received_at,
                            )
                        )
            cur.execute(
                "INSERT INTO readings (sensor_id, capture_dt, loc_id, temperature, humidity,"
                " pcv_temperature, pcv_computed, source, received_at)"
                " SELECT DISTINCT ON (sensor_id, capture_dt) sensor_id, capture_dt, loc_id,"
                " temperature, humidity, pcv_temperature, pcv_computed, source, received_at"
                " FROM readings_in ORDER BY sensor_id, capture_dt"
                " ON CONFLICT (sensor_id, capture_dt) DO NOTHING"
            )
            return cur.rowcount
