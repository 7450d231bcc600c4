"""Thresholds from files into PostgreSQL and onto the compacted thresholds topic, through the
functions and through `iotmon thresholds` (real PostgreSQL and Kafka)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Message
from typer.testing import CliRunner

from iotmon.settings import DatabaseSettings, KafkaSettings
from producers.thresholds import (
    ThresholdError,
    import_thresholds,
    load_thresholds_file,
    publish_thresholds,
    threshold_records,
)
from producers.thresholds_cmd import thresholds_app
from schemas.thresholds import ThresholdRecord
from schemas.topics import topic_name
from tests.helpers import read_topic, value_of

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "infra" / "examples" / "thresholds.yaml"

EXAMPLE_BANDS = [
    ("humidity", "high", Decimal("80.00"), Decimal("100.00")),
    ("pcv_temperature", "green", Decimal("0.00"), Decimal("30.90")),
    ("pcv_temperature", "orange", Decimal("33.00"), None),
    ("pcv_temperature", "yellow", Decimal("31.00"), Decimal("32.90")),
    ("temperature", "red", Decimal("40.00"), None),
    ("temperature", "yellow", Decimal("35.00"), Decimal("39.90")),
]


def invoke(kafka: KafkaSettings, db: DatabaseSettings, *args: str) -> tuple[int, str]:
    env = {"IOTMON_KAFKA__TOPIC_PREFIX": kafka.topic_prefix, "IOTMON_DB__DB_SCHEMA": db.db_schema}
    result = CliRunner().invoke(thresholds_app, list(args), env=env)
    return result.exit_code, result.output


def rows(db: DatabaseSettings, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        return conn.execute(query).fetchall()


def bands(db: DatabaseSettings) -> list[tuple[Any, ...]]:
    return rows(
        db,
        "SELECT threshold_type, level, min_value, max_value FROM thresholds ORDER BY 1, 2",
    )


def latest(messages: list[Message]) -> dict[int, ThresholdRecord]:
    """The compacted view: the last record per key."""
    view: dict[int, ThresholdRecord] = {}
    for msg in messages:
        key = msg.key()
        assert key is not None
        record = ThresholdRecord.model_validate_json(value_of(msg))
        assert key == str(record.threshold.threshold_id).encode()
        view[int(key)] = record
    return view


def read(kafka: KafkaSettings, count: int) -> list[Message]:
    return read_topic(
        kafka, topic_name("thresholds", kafka.topic_prefix), until=lambda m: len(m) >= count
    )


def test_example_file_is_stored_and_published(kafka: KafkaSettings, db: DatabaseSettings) -> None:
    stored = import_thresholds(db, kafka, load_thresholds_file(EXAMPLE), replace=False)
    assert stored == 6
    assert bands(db) == EXAMPLE_BANDS
    assert rows(
        db, "SELECT DISTINCT hold_seconds, clear_seconds, clear_margin FROM thresholds"
    ) == [(60, 60, Decimal("0.00"))]

    view = latest(read(kafka, 6))
    ids = [r[0] for r in rows(db, "SELECT threshold_id FROM thresholds")]
    assert sorted(view) == sorted(ids)
    assert not any(r.deleted for r in view.values())
    orange = next(r.threshold for r in view.values() if r.threshold.level == "orange")
    assert (orange.threshold_type, orange.min_value, orange.max_value) == (
        "pcv_temperature",
        Decimal("33.00"),
        None,
    )
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        assert sorted(threshold_records(conn), key=lambda r: r.threshold.threshold_id) == [
            view[i] for i in sorted(view)
        ]


def test_cli_import_and_replace_publishes_deletions(
    kafka: KafkaSettings, db: DatabaseSettings, tmp_path: Path
) -> None:
    code, out = invoke(kafka, db, "import", str(EXAMPLE))
    assert code == 0, out
    assert "6 thresholds imported" in out
    old = {r[0]: r[1] for r in rows(db, "SELECT threshold_id, threshold_type FROM thresholds")}

    # new pcv_temperature bands, as CSV with empty optional cells
    csv_file = tmp_path / "pcv.csv"
    csv_file.write_text(
        "threshold_type,level,min_value,max_value,loc_id,hold_seconds\n"
        "pcv_temperature,yellow,30.00,32.00,,\n"
        "pcv_temperature,red,32.00,,A011,30\n"
    )
    code, out = invoke(kafka, db, "import", str(csv_file), "--replace")
    assert code == 0, out
    assert [b for b in bands(db) if b[0] == "pcv_temperature"] == [
        ("pcv_temperature", "red", Decimal("32.00"), None),
        ("pcv_temperature", "yellow", Decimal("30.00"), Decimal("32.00")),
    ]
    assert rows(
        db,
        "SELECT loc_id, hold_seconds FROM thresholds WHERE level = 'red'"
        " AND threshold_type = 'pcv_temperature'",
    ) == [("A011", 30)]
    # the other metrics are untouched
    assert [b for b in bands(db) if b[0] != "pcv_temperature"] == [
        b for b in EXAMPLE_BANDS if b[0] != "pcv_temperature"
    ]

    # first import: 6 bands; second: the 5 stored bands (3 kept, 2 new) and 3 deletions
    view = latest(read(kafka, 6 + 5 + 3))
    deleted = {i for i, r in view.items() if r.deleted}
    assert deleted == {i for i, metric in old.items() if metric == "pcv_temperature"}
    # a deletion carries the band it removes
    assert {view[i].threshold.level for i in deleted} == {"green", "yellow", "orange"}
    live = {i for i, r in view.items() if not r.deleted}
    assert live == {r[0] for r in rows(db, "SELECT threshold_id FROM thresholds")}


def test_a_bad_row_is_refused_with_the_row_and_nothing_stored(
    kafka: KafkaSettings, db: DatabaseSettings, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "- {threshold_type: temperature, level: yellow, min_value: 35, max_value: 39.9}\n"
        "- {threshold_type: temperature, level: red, min_value: 40, max_value: 40}\n"
    )
    with pytest.raises(ThresholdError, match=r"row 2 \(temperature red\).*max_value"):
        import_thresholds(db, kafka, load_thresholds_file(bad), replace=True)
    code, out = invoke(kafka, db, "import", str(bad))
    assert code == 2
    assert "row 2" in out and "max_value must be greater than min_value" in out
    assert rows(db, "SELECT count(*) FROM thresholds") == [(0,)]

    unknown = tmp_path / "unknown.csv"
    unknown.write_text("threshold_type,level,min_value,colour\nhumidity,high,80,blue\n")
    code, out = invoke(kafka, db, "import", str(unknown))
    assert code == 2
    assert "row 1 (humidity high): unknown columns ['colour']" in out
    assert rows(db, "SELECT count(*) FROM thresholds") == [(0,)]
    assert (
        read_topic(
            kafka, topic_name("thresholds", kafka.topic_prefix), until=lambda m: False, timeout=3
        )
        == []
    )


def test_sync_publishes_all_and_deletes_what_is_gone(
    kafka: KafkaSettings, db: DatabaseSettings
) -> None:
    import_thresholds(db, kafka, load_thresholds_file(EXAMPLE))
    red = rows(db, "SELECT threshold_id FROM thresholds WHERE level = 'red'")[0][0]
    # removed from the database without a publish (e.g. by hand, or a publish that failed)
    rows_deleted = rows(db, f"DELETE FROM thresholds WHERE threshold_id = {red} RETURNING 1")
    assert rows_deleted == [(1,)]

    code, out = invoke(kafka, db, "sync")
    assert code == 0, out
    assert "5 thresholds published, 1 deletions" in out
    view = latest(read(kafka, 6 + 6))
    assert {i for i, r in view.items() if r.deleted} == {red}
    assert view[red].threshold.threshold_id == red

    # an explicit deletion of a known id
    assert publish_thresholds(db, kafka, deleted_ids=[999]) == 6
    assert latest(read(kafka, 6 + 6 + 6))[999].deleted
