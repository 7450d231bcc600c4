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
        "db-roles",
        "migrate",
        "kafka-access",
        "topics",
        "bridge",
        "ingest",
        "worker",
        "sink",
        "api",
        "notifier",
    } <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["postgres"]["image"].startswith("timescale/timescaledb:")
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:")
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dep in service.get("depends_on", {}):
            assert dep in services, (name, dep)
        for secret in service.get("secrets", []):
            assert secret["source"] in doc["secrets"], (name, secret)
    for volume in ("kafka-data", "pg-data", "mosquitto-data"):
        assert volume in doc["volumes"]
    # The password files live under deploy/, outside the repository's tracked files.
    for name, secret in doc["secrets"].items():
        assert secret["file"].startswith("./deploy/"), name


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
    for name in ("iotmon-ingest", "iotmon-worker", "iotmon-sink", "iotmon-api", "iotmon-notifier"):
        assert ("Deployment", name) in kinds


def test_compose_publishes_only_the_api_and_mqtt_and_holds_no_secret() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    services = yaml.safe_load(text)["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"api", "mosquitto"}
    for name, service in services.items():
        env = service.get("environment", {})
        # Passwords come from mounted files (compose "secrets"), never from the environment.
        assert "POSTGRES_PASSWORD" not in env and "PGPASSWORD" not in env, name
        assert "IOTMON_KAFKA__SASL_PASSWORD" not in env, name
        if "DATABASE_URL" in env:
            assert re.fullmatch(r"postgresql://[a-z_]+@postgres:5432/iotmon", env["DATABASE_URL"])
            assert env["PGPASSWORD_FILE"].startswith("/run/secrets/"), name
            assert "PGPASSWORD_FILE" in service["entrypoint"][2], name
        if "IOTMON_API__TOKENS" in env:
            # Supplied by the operator (.env), required: compose stops without it.
            value = env["IOTMON_API__TOKENS"]
            assert "${IOTMON_" in value and ":?" in value, name
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"].startswith("/run/secrets/")
    assert "change-me" not in text and "iotmon:iotmon@" not in text
    example = (ROOT / ".env.example").read_text()
    assert "IOTMON_API_TOKENS=\n" in example and "IOTMON_DB_PASSWORD" not in example
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
    assert len(workloads) == 13
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
            assert re.fullmatch(r"[^<>]*<[a-z][^<>]*>[^<>]*(<[a-z][^<>]*>[^<>]*)*", value), doc[
                "metadata"
            ]["name"]
            assert not re.search(r"[A-Za-z0-9+/]{24,}", value), doc["metadata"]["name"]
    example_keys = {doc["metadata"]["name"]: set(doc["stringData"]) for doc in examples}
    referenced = set()
    for workload in _workloads():
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    referenced.add(source["secretRef"]["name"])
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add(ref["name"])
                    assert ref["key"] in example_keys[ref["name"]], ref
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                name = volume["secret"]["secretName"]
                referenced.add(name)
                for item in volume["secret"].get("items", []):
                    assert item["key"] in example_keys[name], (name, item)
    assert referenced == set(example_keys)


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
    # A listener option: after every listener line (no session takeover on either).
    for i, words in enumerate(lines):
        if words[0] == "listener":
            assert lines[i + 1] == ["use_username_as_clientid", "true"], where
    # Alert states are retained (alerts/#, the notifier's); the bridge skips retained copies.
    assert options["retain_available"] == ["true"]
    assert "CBC" not in " ".join(options["ciphers"]) and "SHA:" not in options["ciphers"][0]


# --- Logins: Kafka (SASL/SCRAM + ACLs) and PostgreSQL (least-privilege roles) -------------

# The Kafka principal of each iotmon pod (None: no Kafka login at all) ...
K8S_KAFKA_PRINCIPALS: dict[str, str | None] = {
    "iotmon-bridge": "bridge",
    "iotmon-ingest": "ingest",
    "iotmon-worker": "worker",
    "iotmon-sink": "sink",
    "iotmon-api": "api",
    "iotmon-notifier": "notifier",
    "iotmon-kafka-access": "admin",
    "iotmon-topics": "admin",
    "iotmon-migrate": None,
    "iotmon-db-roles": None,
}
# ... and its PostgreSQL role (None: no database login).
K8S_DB_ROLES: dict[str, str | None] = {
    "iotmon-bridge": None,
    "iotmon-ingest": "iotmon_sink",
    "iotmon-worker": None,
    "iotmon-sink": "iotmon_sink",
    "iotmon-api": "iotmon_api",
    "iotmon-notifier": "iotmon_api",  # it reads the subscriptions, writes the notification log
    "iotmon-kafka-access": None,
    "iotmon-topics": None,
    "iotmon-migrate": "iotmon_migrator",
    "iotmon-db-roles": "iotmon",  # the superuser: this one-shot job alone
}
SUPERUSER = "iotmon"
KAFKA_PRINCIPALS = (
    "admin",
    "controller",
    "gateway",
    "bridge",
    "ingest",
    "worker",
    "sink",
    "api",
    "notifier",
)


def _properties(text: str) -> dict[str, str]:
    out = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _iotmon_containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(app label, pod spec, container) of every iotmon container."""
    out = []
    for workload in _workloads():
        pod = workload["spec"]["template"]["spec"]
        app = workload["spec"]["template"]["metadata"]["labels"]["app"]
        for container in pod["containers"]:
            if container["image"].startswith("iotmon"):
                out.append((app, pod, container))
    return out


def _resolved_env(container: dict[str, Any]) -> dict[str, Any]:
    """The container's environment: its ConfigMaps, then its own variables (which win)."""
    config_maps = {
        d["metadata"]["name"]: d["data"] for d in _k8s_docs() if d["kind"] == "ConfigMap"
    }
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", var.get("valueFrom"))
    return env


def _secret_mounts(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mount path -> the secret volume mounted there."""
    volumes = {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}
    return {
        m["mountPath"]: volumes[m["name"]]
        for m in container.get("volumeMounts", [])
        if m["name"] in volumes
    }


def test_k8s_every_iotmon_container_logs_in_to_kafka_as_its_own_principal() -> None:
    containers = _iotmon_containers()
    assert {app for app, _, _ in containers} == set(K8S_KAFKA_PRINCIPALS)
    for app, pod, container in containers:
        env = _resolved_env(container)
        principal = K8S_KAFKA_PRINCIPALS[app]
        assert env["IOTMON_KAFKA__SECURITY_PROTOCOL"] == "SASL_PLAINTEXT", app
        assert env.get("IOTMON_KAFKA__SASL_USERNAME") == principal, app
        assert "IOTMON_KAFKA__SASL_PASSWORD" not in env, app  # a file, never a value
        kafka_secret = _secret_mounts(pod, container).get("/run/secrets/kafka")
        if principal is None:
            assert "IOTMON_KAFKA__SASL_PASSWORD_FILE" not in env, app
            assert kafka_secret is None, app
            continue
        assert env["IOTMON_KAFKA__SASL_PASSWORD_FILE"] == f"/run/secrets/kafka/{principal}", app
        assert kafka_secret is not None, app
        assert kafka_secret["secretName"] == "iotmon-kafka-credentials", app
        keys = {item["key"] for item in kafka_secret["items"]}
        if app == "iotmon-kafka-access":
            # It sets every component principal's credential; the controller's is not its.
            assert keys == set(KAFKA_PRINCIPALS) - {"controller"}, app
        else:
            assert keys == {principal}, app  # its own password and no other


def test_k8s_database_logins_are_least_privilege() -> None:
    for app, _, container in _iotmon_containers():
        env = _resolved_env(container)
        role = K8S_DB_ROLES[app]
        if role is None:
            assert "DATABASE_URL" not in env and "PGPASSWORD" not in env, app
            continue
        assert env["DATABASE_URL"] == f"postgresql://{role}@postgres:5432/iotmon", app
        ref = env["PGPASSWORD"]["secretKeyRef"]
        kind = "POSTGRES_PASSWORD" if role == SUPERUSER else role.removeprefix("iotmon_")
        assert ref == {"name": "iotmon-database", "key": kind}, app
        for source in container.get("envFrom", []):
            assert source.get("secretRef", {}).get("name") != "iotmon-database", app
    postgres = next(w for w in _workloads() if w["metadata"]["name"] == "postgres")
    container = postgres["spec"]["template"]["spec"]["containers"][0]
    env = {v["name"]: v.get("value") for v in container["env"]}
    assert env["POSTGRES_USER"] == SUPERUSER and "POSTGRES_PASSWORD_FILE" in env


def test_every_kafka_broker_we_ship_requires_scram_and_acls() -> None:
    kafka = ROOT / "infra" / "kafka"
    props_text = (kafka / "docker-scram.properties").read_text()
    props = _properties(props_text)
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["authorizer.class.name"] == (
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    )
    assert props["super.users"] == "User:admin;User:controller"
    assert props["listeners"] == "SASL_PLAINTEXT://:9092,CONTROLLER://:9093"
    assert props["advertised.listeners"] == "SASL_PLAINTEXT://kafka:9092"
    assert props["listener.security.protocol.map"] == (
        "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT"
    )
    assert props["inter.broker.listener.name"] == "SASL_PLAINTEXT"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["sasl.mechanism.controller.protocol"] == "PLAIN"
    assert props["auto.create.topics.enable"] == "false"
    assert "PLAINTEXT://" not in props["listeners"].replace("SASL_PLAINTEXT://", "")
    # No password in the repository: the JAAS lines hold placeholders only.
    jaas = [v for k, v in props.items() if k.endswith("sasl.jaas.config")]
    assert len(jaas) == 2
    for value in jaas:
        assert set(re.findall(r'password="([^"]*)"', value)) <= {
            "@ADMIN_PASSWORD@",
            "@CONTROLLER_PASSWORD@",
        }, value
    start = (kafka / "docker-scram-start.sh").read_text()
    assert "kafka-storage.sh format --ignore-formatted" in start and "--add-scram" in start
    assert "exec /opt/kafka/bin/kafka-server-start.sh" in start
    # Kubernetes runs the same files, from the kafka-config ConfigMap.
    docs = list(yaml.safe_load_all((ROOT / "infra" / "k8s" / "kafka.yaml").read_text()))
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert config["data"] == {
        "server.properties": props_text,
        "start.sh": start,
        "log4j2.yaml": (kafka / "log4j2.yaml").read_text(),
    }
    broker = next(d for d in docs if d["kind"] == "StatefulSet")
    container = broker["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "/etc/iotmon-kafka/start.sh"]
    assert not any(v["name"].startswith("KAFKA_LISTENER") for v in container["env"])
    # ... and compose mounts them.
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["kafka"]
    assert service["command"] == ["/bin/sh", "/etc/iotmon-kafka/start.sh"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in service["volumes"]}
    assert mounts["./infra/kafka/docker-scram.properties"] == "/etc/iotmon-kafka/server.properties"
    assert mounts["./infra/kafka/docker-scram-start.sh"] == "/etc/iotmon-kafka/start.sh"
    assert not any(k.startswith("KAFKA_LISTENER") for k in service.get("environment", {}))


# The Kafka principal and the PostgreSQL role of each compose service that runs iotmon.
COMPOSE_LOGINS: dict[str, tuple[str | None, str | None]] = {
    "db-roles": (None, SUPERUSER),
    "migrate": (None, "iotmon_migrator"),
    "kafka-access": ("admin", None),
    "topics": ("admin", None),
    "bridge": ("bridge", None),
    "ingest": ("ingest", "iotmon_sink"),
    "worker": ("worker", None),
    "sink": ("sink", "iotmon_sink"),
    "api": ("api", "iotmon_api"),
    "notifier": ("notifier", "iotmon_api"),
    "simulator": ("api", "iotmon_api"),  # registers master data as the API does
}


def test_compose_components_log_in_with_their_own_principal_and_role() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    iotmon = {n for n, s in services.items() if s.get("image", "").startswith("iotmon")}
    assert iotmon == set(COMPOSE_LOGINS)
    superuser = services["postgres"]["environment"]["POSTGRES_USER"]
    assert superuser == SUPERUSER
    for name, (principal, role) in COMPOSE_LOGINS.items():
        service = services[name]
        env = service["environment"]
        mounted = {s["target"]: s["source"] for s in service.get("secrets", [])}
        if principal is None:
            assert "IOTMON_KAFKA__SASL_USERNAME" not in env, name
            assert not any(t.startswith("/run/secrets/kafka/") for t in mounted), name
        else:
            assert env["IOTMON_KAFKA__SECURITY_PROTOCOL"] == "SASL_PLAINTEXT", name
            assert env["IOTMON_KAFKA__SASL_USERNAME"] == principal, name
            password_file = env["IOTMON_KAFKA__SASL_PASSWORD_FILE"]
            assert password_file == f"/run/secrets/kafka/{principal}", name
            assert mounted[password_file] == f"kafka-{principal}", name
            if name != "kafka-access":  # it sets the others' credentials
                kafka_files = {t for t in mounted if t.startswith("/run/secrets/kafka/")}
                assert kafka_files == {password_file}, name
        if role is None:
            assert "DATABASE_URL" not in env, name
            continue
        url = env["DATABASE_URL"]
        assert url == f"postgresql://{role}@postgres:5432/iotmon", name
        if name in {"api", "sink", "ingest", "simulator", "migrate", "notifier"}:
            assert not url.startswith(f"postgresql://{superuser}@"), name
            assert not url.startswith(f"postgresql://{superuser}:"), name
        kind = "postgres" if role == superuser else role.removeprefix("iotmon_")
        assert mounted[env["PGPASSWORD_FILE"]] == f"db-{kind}", name
    # The superuser's password reaches PostgreSQL and the db-roles job alone.
    holders = {
        n for n, s in services.items() for x in s.get("secrets", []) if x["source"] == "db-postgres"
    }
    assert holders == {"postgres", "db-roles"}
    holders = {
        n for n, s in services.items() for x in s.get("secrets", []) if x["source"] == "kafka-admin"
    }
    assert holders == {"kafka", "kafka-access", "topics"}


def test_plain_mqtt_is_reachable_by_the_bridge_only_on_kubernetes() -> None:
    policy = next(
        d
        for d in yaml.safe_load_all((ROOT / "infra" / "k8s" / "networkpolicy.yaml").read_text())
        if d["metadata"]["name"] == "mosquitto"
    )
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        if 1883 in ports:
            sources = rule.get("from", [])
            assert sources and all(
                s["podSelector"]["matchLabels"] == {"app": "iotmon-bridge"} for s in sources
            )


def test_the_notifier_reaches_its_receivers_and_mqtt_over_tls_only() -> None:
    """Egress of the notifier: Kafka, PostgreSQL, Mosquitto's TLS listener, and HTTPS and SMTP
    submission out of the cluster (webhooks, Slack, mail); no other port anywhere."""
    docs = _k8s_docs()
    policy = next(
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "iotmon-notifier"
    )
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app": "iotmon-notifier"}}
    inside: dict[str, set[int]] = {}
    outside: set[int] = set()
    for rule in policy["spec"]["egress"]:
        ports = {p["port"] for p in rule["ports"]}
        for peer in rule["to"]:
            if "ipBlock" in peer:
                outside |= ports
            else:
                inside.setdefault(peer["podSelector"]["matchLabels"]["app"], set()).update(ports)
    assert inside == {"kafka": {9092}, "postgres": {5432}, "mosquitto": {8883}}
    assert outside == {443, 587}
    [ingress] = policy["spec"]["ingress"]
    assert [p["port"] for p in ingress["ports"]] == [9105]
    notifier = next(w for w in _workloads() if w["metadata"]["name"] == "iotmon-notifier")
    assert notifier["spec"]["replicas"] == 1  # each subscription's messages in order
    [container] = notifier["spec"]["template"]["spec"]["containers"]
    assert container["ports"] == [{"containerPort": 9105, "name": "metrics"}]
    env = _resolved_env(container)
    assert env["IOTMON_MQTT__TLS"] == "true" and env["IOTMON_MQTT__PORT"] == "8883"
    mounts = _secret_mounts(notifier["spec"]["template"]["spec"], container)
    assert mounts["/run/secrets/mqtt-ca"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
