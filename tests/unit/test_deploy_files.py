"""docker-compose.yml and infra/k8s describe the same system, stay parseable, and keep the
hardening of the Kubernetes manifests and the Dockerfile (infra/k8s/README.md)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

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
    files = sorted(
        p.name
        for p in k8s.glob("*.yaml")
        if p.name != "kustomization.yaml" and not p.name.endswith(".example.yaml")
    )
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


def test_compose_publishes_only_the_api_and_mqtt_and_holds_no_secret() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    services = yaml.safe_load(text)["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"api", "mosquitto"}
    for name, service in services.items():
        env = service.get("environment", {})
        for key in ("POSTGRES_PASSWORD", "DATABASE_URL", "IOTMON_API__TOKENS"):
            if key in env:
                # Supplied by the operator (.env), required: compose stops without it.
                assert "${IOTMON_" in env[key] and ":?" in env[key], (name, key)
    assert "change-me" not in text and "iotmon:iotmon@" not in text
    example = (ROOT / ".env.example").read_text()
    assert "IOTMON_DB_PASSWORD=\n" in example and "IOTMON_API_TOKENS=\n" in example
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_k8s_commits_no_secret_values() -> None:
    k8s = ROOT / "infra" / "k8s"
    listed = yaml.safe_load((k8s / "kustomization.yaml").read_text())["resources"]
    for name in listed:
        for doc in yaml.safe_load_all((k8s / name).read_text()):
            assert doc["kind"] != "Secret", name
    example = next(yaml.safe_load_all((k8s / "secret.example.yaml").read_text()))
    assert example["kind"] == "Secret"
    assert all("<password>" in v for v in example["stringData"].values())


def _k8s_docs() -> list[dict[str, Any]]:
    k8s = ROOT / "infra" / "k8s"
    listed = yaml.safe_load((k8s / "kustomization.yaml").read_text())["resources"]
    return [doc for name in listed for doc in yaml.safe_load_all((k8s / name).read_text())]


def _workloads() -> list[dict[str, Any]]:
    return [d for d in _k8s_docs() if d["kind"] in {"Deployment", "StatefulSet", "Job"}]


def test_k8s_pods_are_hardened() -> None:
    workloads = _workloads()
    assert len(workloads) == 9
    for workload in workloads:
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert workload["metadata"]["namespace"] == "iotmon", name
        assert pod["automountServiceAccountToken"] is False, name
        pod_ctx = pod["securityContext"]
        assert pod_ctx["runAsNonRoot"] is True, name
        assert pod_ctx["runAsUser"] > 0 and pod_ctx["runAsGroup"] > 0, name
        assert pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert not pod.get("hostNetwork") and not pod.get("hostPID"), name
        for container in pod["containers"] + pod.get("initContainers", []):
            where = (name, container["name"])
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["capabilities"] == {"drop": ["ALL"]}, where
            assert not ctx.get("privileged"), where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), (where, kind)
            if workload["kind"] != "Job":
                assert "readinessProbe" in container and "livenessProbe" in container, where


def test_k8s_images_are_pinned_and_iotmon_matches_the_project_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = {c["image"] for w in _workloads() for c in w["spec"]["template"]["spec"]["containers"]}
    for image in images:
        repository, _, tag = image.partition("@")[0].rpartition(":")
        assert repository and tag and tag != "latest", image
        assert "." in tag, image  # a version, not a floating major tag such as ":2"
    iotmon = {image for image in images if image.startswith("iotmon")}
    assert iotmon == {f"iotmon:{version}"}


def test_k8s_network_policies_deny_by_default_and_cover_every_pod() -> None:
    docs = _k8s_docs()
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    default_deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert default_deny
    selected = {p["spec"]["podSelector"].get("matchLabels", {}).get("app") for p in policies}
    for workload in _workloads():
        app = workload["spec"]["template"]["metadata"]["labels"]["app"]
        assert app in selected, app
    mosquitto = next(
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "mosquitto"
    )
    assert {p["port"] for p in mosquitto["spec"]["ports"]} == {1883, 8883}


def test_k8s_disruption_budgets_cover_the_replicated_and_stateful_components() -> None:
    budgets = {
        d["spec"]["selector"]["matchLabels"]["app"]
        for d in _k8s_docs()
        if d["kind"] == "PodDisruptionBudget"
    }
    assert {"iotmon-ingest", "iotmon-worker", "iotmon-api", "kafka", "postgres"} <= budgets


def test_k8s_secrets_referenced_are_in_the_example_with_placeholders_only() -> None:
    k8s = ROOT / "infra" / "k8s"
    examples = list(yaml.safe_load_all((k8s / "secret.example.yaml").read_text()))
    assert all(doc["kind"] == "Secret" for doc in examples)
    for doc in examples:
        for value in doc["stringData"].values():
            # Placeholders only: every value is one <...> the operator replaces.
            assert re.fullmatch(r"[^<>]*<[a-z][^<>]*>[^<>]*(<[a-z][^<>]*>[^<>]*)*", value), (
                doc["metadata"]["name"]
            )
            assert not re.search(r"[A-Za-z0-9+/]{24,}", value), doc["metadata"]["name"]
    example_names = {doc["metadata"]["name"] for doc in examples}
    referenced = set()
    for workload in _workloads():
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    referenced.add(source["secretRef"]["name"])
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                referenced.add(volume["secret"]["secretName"])
    assert referenced == example_names


def test_dockerfile_pins_its_base_and_runs_as_a_numeric_non_root_user() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    froms = [line for line in lines if line.upper().startswith("FROM ")]
    assert froms and all(re.match(r"FROM python:3\.11\.\d+-slim", f) for f in froms), froms
    users = [line.split()[1] for line in lines if line.upper().startswith("USER ")]
    assert users and re.fullmatch(r"[1-9]\d{3,}(:[1-9]\d{3,})?", users[-1]), users
    pip = [line for line in lines if "pip install" in line]
    assert pip and all("--no-cache-dir" in line for line in pip)


def _mosquitto_configs() -> dict[str, str]:
    k8s = next(
        d
        for d in yaml.safe_load_all((ROOT / "infra" / "k8s" / "mosquitto.yaml").read_text())
        if d["kind"] == "ConfigMap"
    )
    return {
        "local stack": (ROOT / "infra" / "mosquitto" / "mosquitto.conf").read_text(),
        "compose": (ROOT / "infra" / "mosquitto" / "docker.conf").read_text(),
        "kubernetes": k8s["data"]["mosquitto.conf"],
    }


@pytest.mark.parametrize("where", ["local stack", "compose", "kubernetes"])
def test_every_mosquitto_we_ship_refuses_anonymous_clients_and_offers_tls(where: str) -> None:
    lines = [
        line.split("#", 1)[0].split()
        for line in _mosquitto_configs()[where].splitlines()
        if line.split("#", 1)[0].strip()
    ]
    options = {words[0]: words[1:] for words in lines}
    assert options["allow_anonymous"] == ["false"]
    assert options["per_listener_settings"] == ["false"]  # one rule for every listener
    assert "password_file" in options and "acl_file" in options
    assert sum(words[0] == "listener" for words in lines) == 2
    assert {"cafile", "certfile", "keyfile"} <= set(options)
