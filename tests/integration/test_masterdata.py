"""`iotmon locations import` against the real PostgreSQL and Kafka."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from iotmon.cli import app
from iotmon.settings import DatabaseSettings, KafkaSettings
from schemas.master import SensorRecord
from schemas.topics import topic_name
from tests.helpers import read_topic, value_of

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "infra" / "examples"


def invoke(kafka: KafkaSettings, db: DatabaseSettings, *args: str) -> tuple[int, str]:
    env = {"IOTMON_KAFKA__TOPIC_PREFIX": kafka.topic_prefix, "IOTMON_DB__DB_SCHEMA": db.db_schema}
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def rows(db: DatabaseSettings, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        return conn.execute(query).fetchall()


def test_csv_import_stores_and_publishes(kafka: KafkaSettings, db: DatabaseSettings) -> None:
    code, out = invoke(kafka, db, "locations", "import", str(EXAMPLES / "locations.csv"))
    assert code == 0, out
    assert rows(db, "SELECT sensor_id, loc_id FROM sensors ORDER BY 1") == [
        ("TEMPIOT-A011", "A011"),
        ("TEMPIOT-A012", "A012"),
        ("TEMPIOT-A031", "A031"),
        ("TEMPIOT-B011", "B011"),
    ]
    assert rows(db, "SELECT factory, building, floor, area FROM locations WHERE loc_id='A031'") == [
        ("SinPyeong", "F-2001", 1, "Assembly 2")
    ]
    msgs = read_topic(kafka, topic_name("sensors", kafka.topic_prefix), until=lambda m: len(m) >= 4)
    records = {m.key(): SensorRecord.model_validate_json(value_of(m)) for m in msgs}
    assert records[b"TEMPIOT-B011"].location.factory == "JangNim"
    assert records[b"TEMPIOT-A011"].sensor.name == "Storage north wall"


def test_yaml_import_updates_in_place(kafka: KafkaSettings, db: DatabaseSettings) -> None:
    assert invoke(kafka, db, "locations", "import", str(EXAMPLES / "locations.csv"))[0] == 0
    code, out = invoke(kafka, db, "locations", "import", str(EXAMPLES / "locations.yaml"))
    assert code == 0, out
    assert rows(db, "SELECT count(*) FROM sensors") == [(4,)]


def test_a_bad_file_is_refused_with_the_row(
    kafka: KafkaSettings, db: DatabaseSettings, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("sensor_id,loc_id,factory,floor\nTEMPIOT-A011,A011,SinPyeong,first\n")
    code, out = invoke(kafka, db, "locations", "import", str(bad))
    assert code == 2
    assert "row 1" in out
    assert rows(db, "SELECT count(*) FROM sensors") == [(0,)]
