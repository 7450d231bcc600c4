"""Threshold bands: import from CSV/YAML into PostgreSQL and publish them to the compacted
thresholds topic.

PostgreSQL is the system of record.  The topic carries one record per band, keyed by
``str(threshold_id)``; a band removed from the database is published once more with
``deleted=True`` so that running stream applications drop it.  An import validates every row
first (nothing is stored when one is wrong), writes the database in one transaction, then
publishes every stored band and the deletions.
"""

from __future__ import annotations

import csv
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import ValidationError

from iotmon.settings import DatabaseSettings, KafkaSettings
from producers.kafka import publish_keyed
from schemas.thresholds import Threshold, ThresholdRecord
from schemas.topics import topic_name

log = logging.getLogger(__name__)

# Columns a file may set; the id and upd_dt are the database's.
FILE_FIELDS = (
    "threshold_type",
    "level",
    "min_value",
    "max_value",
    "factory",
    "building",
    "floor",
    "loc_id",
    "hold_seconds",
    "clear_seconds",
    "clear_margin",
)
_COLUMNS = ("threshold_id", *FILE_FIELDS, "upd_dt")
# numeric(8, 2) in the thresholds table
_VALUE_LIMIT = Decimal("1000000")


class ThresholdError(ValueError):
    """The rows cannot be imported; the message names the row and the problem."""


def _clean(row: dict[Any, Any]) -> dict[str, Any]:
    return {
        str(k).strip(): (None if v is None or (isinstance(v, str) and not v.strip()) else v)
        for k, v in row.items()
        if k is not None and str(k).strip()
    }


def load_thresholds_file(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV file (header row) or a YAML file (a list of rows, or ``thresholds:``
    and a list).  Empty cells become None; the rows are checked by :func:`validate_rows`.

    Raises :class:`ThresholdError` for a file of another kind or shape.
    """
    text = path.read_text(encoding="utf-8-sig")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return [_clean(row) for row in csv.DictReader(text.splitlines())]
    if suffix not in (".yaml", ".yml"):
        raise ThresholdError(f"{path.name}: expected a .csv, .yaml or .yml file")
    doc = yaml.safe_load(text)
    if isinstance(doc, dict):
        doc = doc.get("thresholds")
    if not isinstance(doc, list) or not all(isinstance(row, dict) for row in doc):
        raise ThresholdError(f"{path.name}: expected a list of rows (or thresholds: [rows])")
    return [_clean(row) for row in doc]


def _describe(n: int, row: dict[str, Any]) -> str:
    what = " ".join(str(row[k]) for k in ("threshold_type", "level") if row.get(k) is not None)
    return f"row {n}" + (f" ({what})" if what else "")


def validate_rows(rows: Iterable[dict[str, Any]]) -> list[Threshold]:
    """Check every row with the model's rules (metric, level, ``max_value > min_value``,
    non-negative hold/clear settings) and the table's precision.

    Returns the bands with ``threshold_id=0``; raises :class:`ThresholdError` naming the
    first wrong row (counted from 1, in file order).
    """
    now = datetime.now(UTC)
    bands: list[Threshold] = []
    for n, raw in enumerate(rows, start=1):
        row = _clean(raw)
        unknown = sorted(set(row) - set(FILE_FIELDS))
        if unknown:
            raise ThresholdError(
                f"{_describe(n, row)}: unknown columns {unknown}; expected {list(FILE_FIELDS)}"
            )
        given = {k: v for k, v in row.items() if v is not None}  # None: the default
        try:
            band = Threshold(threshold_id=0, upd_dt=now, **given)
        except ValidationError as exc:
            problems = "; ".join(
                (f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "") + e["msg"]
                for e in exc.errors()
            )
            raise ThresholdError(f"{_describe(n, row)}: {problems}") from exc
        for name in ("min_value", "max_value", "clear_margin"):
            value = getattr(band, name)
            if value is not None and abs(value) >= _VALUE_LIMIT:
                raise ThresholdError(f"{_describe(n, row)}: {name} {value} is out of range")
        bands.append(band)
    return bands


def _search_path(conn: psycopg.Connection[Any], schema: str) -> None:
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))


_SELECT = sql.SQL("SELECT {} FROM thresholds").format(
    sql.SQL(", ").join(sql.Identifier(c) for c in _COLUMNS)
)


def threshold_records(conn: psycopg.Connection[Any]) -> list[ThresholdRecord]:
    """Every stored band, by id (the caller sets the search path)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_SELECT + sql.SQL(" ORDER BY threshold_id")).fetchall()
    return [ThresholdRecord(threshold=Threshold(**row)) for row in rows]


def deleted_record(threshold_id: int, upd_dt: datetime | None = None) -> ThresholdRecord:
    """A deletion of which only the id is known.  The other fields are placeholders that the
    model requires; consumers act on ``deleted`` and the id alone."""
    return ThresholdRecord(
        threshold=Threshold(
            threshold_id=threshold_id,
            threshold_type="temperature",
            level="info",
            upd_dt=upd_dt or datetime.now(UTC),
        ),
        deleted=True,
    )


def publish(kafka: KafkaSettings, records: Iterable[ThresholdRecord]) -> int:
    """Produce the records keyed by ``str(threshold_id)`` and wait for the broker; raises
    KafkaException when some were not confirmed."""
    return publish_keyed(kafka, "thresholds", ((str(r.threshold.threshold_id), r) for r in records))


def publish_thresholds(
    db: DatabaseSettings, kafka: KafkaSettings, deleted_ids: Iterable[int] = ()
) -> int:
    """Publish every stored band, then a deletion for each of ``deleted_ids``; returns the
    number of records published.  Bands go first so that a metric is never left without
    bands while a replacement is under way."""
    with psycopg.connect(db.url) as conn:
        _search_path(conn, db.db_schema)
        records = threshold_records(conn)
    now = datetime.now(UTC)
    records.extend(deleted_record(i, now) for i in sorted(set(deleted_ids)))
    count = publish(kafka, records)
    log.info("thresholds: %d records published", count)
    return count


def _track(live: set[int], key: bytes | None, value: bytes | None) -> None:
    try:
        threshold_id = int(key or b"")
        deleted = value is None or ThresholdRecord.model_validate_json(value).deleted
    except (ValueError, ValidationError) as exc:
        log.warning("thresholds topic: ignoring a record with key %r: %s", key, exc)
        return
    if deleted:
        live.discard(threshold_id)
    else:
        live.add(threshold_id)


def published_ids(kafka: KafkaSettings, timeout: float = 30.0) -> set[int]:
    """Ids whose latest record on the thresholds topic is a live band (read to the end).

    Raises TimeoutError when the end of the topic is not reached in ``timeout`` seconds.
    """
    topic = topic_name("thresholds", kafka.topic_prefix)
    consumer = Consumer(
        {
            **kafka.client_config(),
            "group.id": f"{kafka.client_id}-thresholds-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    live: set[int] = set()
    try:
        partitions = consumer.list_topics(topic, timeout=timeout).topics[topic].partitions
        ends: dict[int, int] = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + timeout
        while ends:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: end not reached in {timeout}s")
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is None:
                    _track(live, msg.key(), msg.value())
            # positions, not the last offset seen: compaction leaves gaps in the offsets
            for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
                if tp.offset >= ends[tp.partition]:
                    del ends[tp.partition]
    finally:
        consumer.close()
    return live


def sync_thresholds(db: DatabaseSettings, kafka: KafkaSettings) -> tuple[int, int]:
    """Make the topic match the database: publish every stored band, and a deletion for
    each band still live on the topic but gone from the database (e.g. when a publish
    failed after an import).  Returns (bands published, deletions published)."""
    on_topic = published_ids(kafka)  # before the database: see docs of import_thresholds
    with psycopg.connect(db.url) as conn:
        _search_path(conn, db.db_schema)
        stored = {r.threshold.threshold_id for r in threshold_records(conn)}
    gone = on_topic - stored
    total = publish_thresholds(db, kafka, gone)
    return total - len(gone), len(gone)


def _insert(conn: psycopg.Connection[Any], bands: Sequence[Threshold]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL("INSERT INTO thresholds ({}) VALUES ({})").format(
                sql.SQL(", ").join(sql.Identifier(c) for c in FILE_FIELDS),
                sql.SQL(", ").join(sql.Placeholder() for _ in FILE_FIELDS),
            ),
            [tuple(getattr(b, c) for c in FILE_FIELDS) for b in bands],
        )


def _delete_metrics(conn: psycopg.Connection[Any], metrics: Sequence[str]) -> list[Threshold]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            sql.SQL("DELETE FROM thresholds WHERE threshold_type = ANY(%s) RETURNING {}").format(
                sql.SQL(", ").join(sql.Identifier(c) for c in _COLUMNS)
            ),
            (list(metrics),),
        ).fetchall()
    return [Threshold(**row) for row in rows]


def import_thresholds(
    db: DatabaseSettings,
    kafka: KafkaSettings,
    rows: Iterable[dict[str, Any]],
    replace: bool = False,
) -> int:
    """Validate, store and publish the bands of ``rows``; returns how many were stored.

    With ``replace=True`` the stored bands of every metric that the rows name are deleted
    first (same transaction), and their deletions are published with their former fields.
    Raises :class:`ThresholdError` (nothing stored, nothing published) when a row is wrong.
    The database commits before anything is published: if publishing fails, `iotmon
    thresholds sync` brings the topic in line (it reads the topic before the database, so a
    concurrent import is never undone).
    """
    bands = validate_rows(rows)
    metrics = sorted({b.threshold_type for b in bands})
    with psycopg.connect(db.url) as conn:
        _search_path(conn, db.db_schema)
        with conn.transaction():
            removed = _delete_metrics(conn, metrics) if replace else []
            _insert(conn, bands)
        records = threshold_records(conn)
    now = datetime.now(UTC)
    records.extend(
        ThresholdRecord(threshold=t.model_copy(update={"upd_dt": now}), deleted=True)
        for t in removed
    )
    count = publish(kafka, records)
    log.info(
        "thresholds: %d stored, %d replaced (metrics %s); %d records published",
        len(bands),
        len(removed),
        ", ".join(metrics) if replace else "-",
        count,
    )
    return len(bands)
