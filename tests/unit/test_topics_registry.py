from __future__ import annotations

import pathlib
import re

import pytest

from schemas.topics import TOPICS, topic_config, topic_name

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_topic_is_declared_once_with_a_unique_name() -> None:
    names = [spec.name for spec in TOPICS.values()]
    assert len(names) == len(set(names))
    assert topic_name("readings_raw", "plant1.") == "plant1.iot.readings.raw"


def test_master_data_topics_are_compacted() -> None:
    assert topic_config(TOPICS["sensors"])["cleanup.policy"] == "compact"
    assert topic_config(TOPICS["thresholds"])["cleanup.policy"] == "compact"
    assert topic_config(TOPICS["readings_raw"])["cleanup.policy"] == "delete"


def test_no_topic_name_is_spelled_outside_the_registry() -> None:
    pattern = re.compile("|".join(re.escape(s.name) for s in TOPICS.values()))
    offenders = []
    for package in ("producers", "stream_apps", "api", "iotmon"):
        for path in (ROOT / package).rglob("*.py"):
            if pattern.search(path.read_text()):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_schemas_import_no_infrastructure_clients() -> None:
    forbidden = re.compile(
        r"^\s*(from|import)\s+(confluent_kafka|aiokafka|faust|psycopg|fastapi)", re.M
    )
    for path in (ROOT / "schemas").rglob("*.py"):
        assert not forbidden.search(path.read_text()), path
