from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from iotmon.settings import Settings

pytestmark = pytest.mark.unit


def test_nested_variables_reach_their_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOTMON_KAFKA__BOOTSTRAP_SERVERS", "broker:29092")
    monkeypatch.setenv("IOTMON_DB__DB_SCHEMA", "plant7")
    monkeypatch.setenv("IOTMON_MQTT__EXTRA_TOPICS", '["gw/+/data"]')
    s = Settings()
    assert s.kafka.bootstrap_servers == "broker:29092"
    assert s.db.db_schema == "plant7"
    assert s.mqtt.extra_topics == ["gw/+/data"]


def test_addresses_follow_the_stack_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOTMON_STACK__KAFKA_PORT", "19092")
    monkeypatch.setenv("IOTMON_STACK__POSTGRES_PORT", "15432")
    monkeypatch.setenv("IOTMON_STACK__MOSQUITTO_PORT", "21883")
    s = Settings()
    assert s.kafka.bootstrap_servers == "127.0.0.1:19092"
    pgpass = s.stack.state_dir / "postgres-auth" / "pgpass"
    assert s.db.url == f"postgresql://iotmon@127.0.0.1:15432/iotmon?passfile={pgpass}"
    assert s.mqtt.port == 21883
    assert s.stack.manage_postgres


def test_database_url_means_an_external_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db.example:5432/plant")
    s = Settings()
    assert s.db.url == "postgresql://u:p@db.example:5432/plant"
    assert not s.stack.manage_postgres


def test_invalid_schema_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOTMON_DB__DB_SCHEMA", "x; drop table y")
    with pytest.raises(ValueError, match="db_schema"):
        Settings()


def environment_variables() -> list[str]:
    names = []
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            names += [f"IOTMON_{section.upper()}__{sub.upper()}" for sub in model.model_fields]
    return names


def test_every_variable_is_in_the_readme_table() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [n for n in environment_variables() if f"`{n}`" not in readme]
    assert missing == []
    assert "`DATABASE_URL`" in readme
