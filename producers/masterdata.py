"""Master data (locations and sensors): import from CSV/YAML into PostgreSQL and publish it.

PostgreSQL is the system of record; the compacted sensors topic carries each sensor joined
with its location so that running stream applications see a change within seconds.  An
import writes the database first (one transaction), then publishes the stored rows.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import ValidationError

from iotmon.db import rollups
from iotmon.settings import DatabaseSettings, KafkaSettings
from producers.kafka import publish_keyed
from schemas.master import Location, Sensor, SensorRecord, loc_id_by_convention

log = logging.getLogger(__name__)

_LOCATION_FIELDS = set(Location.model_fields)
_SENSOR_FIELDS = {"sensor_id", "name", "gateway"}


class MasterDataError(ValueError):
    """The file cannot be imported; the message names the row and the problem."""


@dataclass
class MasterData:
    locations: list[Location] = field(default_factory=list)
    sensors: list[Sensor] = field(default_factory=list)


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    return {k.strip(): (None if v in ("", None) else v) for k, v in row.items() if k}


def from_rows(rows: Iterable[dict[str, Any]]) -> MasterData:
    """One row per sensor with its location's columns (the original system's shape).

    A location's columns may repeat on every row of its sensors; the last row wins.
    """
    locations: dict[str, Location] = {}
    sensors: list[Sensor] = []
    for n, raw in enumerate(rows, start=1):
        row = _clean(raw)
        try:
            loc_fields = {k: v for k, v in row.items() if k in _LOCATION_FIELDS}
            if row.get("is_active") is not None:
                loc_fields["is_active"] = str(row["is_active"]).lower() in ("1", "true", "yes")
            location = Location(**loc_fields)
            locations[location.loc_id] = location
            if row.get("sensor_id"):
                sensors.append(
                    Sensor(
                        sensor_id=row["sensor_id"],
                        loc_id=location.loc_id,
                        name=row.get("name"),
                        gateway=row.get("gateway"),
                    )
                )
        except ValidationError as exc:
            raise MasterDataError(f"row {n}: {exc}") from exc
    return MasterData(list(locations.values()), sensors)


def load_file(path: Path) -> MasterData:
    """Read a CSV (header row) or YAML file (a list of rows, or ``locations:`` and
    ``sensors:`` lists)."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        return from_rows(csv.DictReader(text.splitlines()))
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise MasterDataError(f"{path.name}: expected a .csv, .yaml or .yml file")
    doc = yaml.safe_load(text)
    if isinstance(doc, list):
        return from_rows(doc)
    if isinstance(doc, dict):
        data = from_rows(doc.get("locations") or [])
        try:
            data.sensors.extend(Sensor(**s) for s in doc.get("sensors") or [])
        except (ValidationError, TypeError) as exc:
            raise MasterDataError(f"sensors: {exc}") from exc
        return data
    raise MasterDataError(f"{path.name}: expected a list of rows or locations/sensors")


def _search_path(conn: psycopg.Connection[Any], schema: str) -> None:
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))


def upsert(conn: psycopg.Connection[Any], data: MasterData, *, auto: bool = False) -> None:
    """Insert or update the locations and sensors (caller owns the transaction).

    ``auto=True`` (automatic registration) only inserts: it never overwrites a location or
    sensor that someone registered properly.
    """
    if auto:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO locations (loc_id, factory) VALUES (%s, %s)"
                " ON CONFLICT (loc_id) DO NOTHING",
                [(loc.loc_id, loc.factory) for loc in data.locations],
            )
            cur.executemany(
                "INSERT INTO sensors (sensor_id, loc_id, gateway, auto_registered)"
                " VALUES (%s, %s, %s, true)"
                " ON CONFLICT (sensor_id) DO NOTHING",
                [(s.sensor_id, s.loc_id, s.gateway) for s in data.sensors],
            )
        return
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO locations (loc_id, plant, factory, building, floor, area,"
            " location_name, is_active, timezone, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, now())"
            " ON CONFLICT (loc_id) DO UPDATE SET plant = EXCLUDED.plant,"
            " factory = EXCLUDED.factory, building = EXCLUDED.building,"
            " floor = EXCLUDED.floor, area = EXCLUDED.area,"
            " location_name = EXCLUDED.location_name, is_active = EXCLUDED.is_active,"
            " timezone = EXCLUDED.timezone, updated_at = now()",
            [
                (
                    loc.loc_id,
                    loc.plant,
                    loc.factory,
                    loc.building,
                    loc.floor,
                    loc.area,
                    loc.location_name,
                    loc.is_active,
                    loc.timezone,
                )
                for loc in data.locations
            ],
        )
        cur.executemany(
            "INSERT INTO sensors (sensor_id, loc_id, name, is_active, gateway,"
            " auto_registered, updated_at) VALUES (%s, %s, %s, %s, %s, %s, now())"
            " ON CONFLICT (sensor_id) DO UPDATE SET loc_id = EXCLUDED.loc_id,"
            " name = coalesce(EXCLUDED.name, sensors.name), is_active = EXCLUDED.is_active,"
            " gateway = EXCLUDED.gateway, updated_at = now()",
            [(s.sensor_id, s.loc_id, s.name, s.is_active, s.gateway, False) for s in data.sensors],
        )


def sensor_records(
    conn: psycopg.Connection[Any], loc_ids: Iterable[str] | None = None
) -> list[SensorRecord]:
    """Stored sensors joined with their locations (all, or those at ``loc_ids``)."""
    query = (
        "SELECT s.sensor_id, s.loc_id, s.name, s.is_active AS sensor_active, s.gateway,"
        " l.plant,"
        " l.factory, l.building, l.floor, l.area, l.location_name, l.is_active,"
        " l.timezone, greatest(s.updated_at, l.updated_at) AS updated_at"
        " FROM sensors s JOIN locations l USING (loc_id)"
    )
    params: tuple[Any, ...] = ()
    if loc_ids is not None:
        query += " WHERE s.loc_id = ANY(%s)"
        params = (list(loc_ids),)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query + " ORDER BY s.sensor_id", params).fetchall()
    return [
        SensorRecord(
            sensor=Sensor(
                sensor_id=r["sensor_id"],
                loc_id=r["loc_id"],
                name=r["name"],
                is_active=r["sensor_active"],
                gateway=r["gateway"],
            ),
            location=Location(
                loc_id=r["loc_id"],
                plant=r["plant"],
                factory=r["factory"],
                building=r["building"],
                floor=r["floor"],
                area=r["area"],
                location_name=r["location_name"],
                is_active=r["is_active"],
                timezone=r["timezone"],
            ),
            updated_at=r["updated_at"],
        )
        for r in rows
    ]


def publish(kafka: KafkaSettings, records: Iterable[SensorRecord]) -> int:
    """Produce the records to the compacted sensors topic and wait for the broker."""
    return publish_keyed(kafka, "sensors", ((r.sensor.sensor_id, r) for r in records))


def places(conn: psycopg.Connection[Any], loc_ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """loc_id -> (factory, building, floor) of those that exist."""
    rows = conn.execute(
        "SELECT loc_id, factory, building, floor FROM locations WHERE loc_id = ANY(%s)",
        (loc_ids,),
    ).fetchall()
    return {str(r[0]): tuple(r[1:]) for r in rows}


def has_hours(conn: psycopg.Connection[Any], loc_ids: list[str]) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM hourly_aggregates WHERE loc_id = ANY(%s))", (loc_ids,)
    ).fetchone()
    return bool(row and row[0])


def import_master_data(
    db: DatabaseSettings, kafka: KafkaSettings, data: MasterData, *, auto: bool = False
) -> list[SensorRecord]:
    """Store and publish; returns the sensor records published (every sensor of a touched
    location, as stored)."""
    loc_ids = [loc.loc_id for loc in data.locations]
    with psycopg.connect(db.url) as conn:
        _search_path(conn, db.db_schema)
        with conn.transaction():
            before = places(conn, loc_ids)
            upsert(conn, data, auto=auto)
            after = places(conn, loc_ids)
            # A location that moved, or one that came (back) with hours already stored,
            # changed the floor rollup of its past hours.
            changed = [loc for loc in loc_ids if before.get(loc) != after.get(loc)]
            moved = bool(changed) and has_hours(conn, changed)
        touched = set(loc_ids) | {s.loc_id for s in data.sensors}
        records = sensor_records(conn, touched)
    count = publish(kafka, records)
    if moved:
        # Committed (when the connection closed): the daily and monthly rollups follow
        # now, not at their next scheduled refresh.
        rollups.refresh_all(db)
    log.info(
        "master data: %d locations, %d sensors stored; %d sensor records published",
        len(data.locations),
        len(data.sensors),
        count,
    )
    return records


def auto_register(
    sensor_id: str, factory: str = "unknown", gateway: str | None = None
) -> MasterData:
    """Master data for a sensor seen for the first time, by the original convention
    (``loc_id`` = last 4 characters of the sensor id), assigned to the gateway it came from
    (so that no other gateway can report it from then on)."""
    loc_id = loc_id_by_convention(sensor_id)
    return MasterData(
        [Location(loc_id=loc_id, factory=factory)],
        [Sensor(sensor_id=sensor_id, loc_id=loc_id, gateway=gateway)],
    )
