"""docker-compose.yml and infra/k8s describe the same system and stay parseable."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_is_valid_and_complete() -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {
        "kafka",
        "postgres",
        "mosquitto",
        "migrate",
        "topics",
        "bridge",
        "ingest",
        "worker",
        "sink",
        "api",
    } <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["postgres"]["image"].startswith("timescale/timescaledb:")
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:")
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dep in service.get("depends_on", {}):
            assert dep in services, (name, dep)
    for volume in ("kafka-data", "pg-data", "mosquitto-data"):
        assert volume in doc["volumes"]


def test_k8s_manifests_parse_and_are_all_listed() -> None:
    k8s = ROOT / "infra" / "k8s"
    listed = yaml.safe_load((k8s / "kustomization.yaml").read_text())["resources"]
    files = sorted(p.name for p in k8s.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == files
    kinds = set()
    for name in files:
        for doc in yaml.safe_load_all((k8s / name).read_text()):
            assert doc["apiVersion"] and doc["metadata"]["name"], name
            kinds.add((doc["kind"], doc["metadata"]["name"]))
    assert ("StatefulSet", "kafka") in kinds
    assert ("Deployment", "iotmon-bridge") in kinds
    assert ("Job", "iotmon-migrate") in kinds
    for name in ("iotmon-ingest", "iotmon-worker", "iotmon-sink", "iotmon-api"):
        assert ("Deployment", name) in kinds
