"""Fixtures on the real local stack (``iotmon stack up``, or the addresses in the environment).

Every integration test gets its own Kafka topics (a unique topic prefix), consumer group,
MQTT topic prefix and PostgreSQL schema, so tests never see each other's data.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from iotmon.db.migrate import migrate
from iotmon.mqtt_auth import AuthDir
from iotmon.settings import DatabaseSettings, KafkaSettings, MqttSettings, Settings
from iotmon.stack import Stack
from iotmon.topics import delete_prefixed_topics, ensure_topics
from tests.helpers import TEST_GATEWAY, gateway_settings, mqtt_login_works


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return Settings()


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def pytest_report_header() -> str:
    """The storage the tests run on, at the top of every run's log."""
    url = Settings().db.url
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            row = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
            ).fetchone()
            server = conn.info.server_version
    except psycopg.Error:
        return "storage: PostgreSQL not reachable yet"
    name = psycopg.conninfo.conninfo_to_dict(url).get("dbname")
    major, minor = divmod(server, 10000)
    kind = f"TimescaleDB {row[0]}" if row else "plain PostgreSQL (no TimescaleDB)"
    return f"storage: {kind} on PostgreSQL {major}.{minor}, database {name}"


def _ensure_database(url: str) -> None:
    """Create the database ``url`` names when the server lacks it (e.g. the plain-PostgreSQL
    run's ``iotmon_plain``, in which TimescaleDB is never enabled)."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    name = str(params.get("dbname") or "")
    admin = psycopg.conninfo.make_conninfo(url, dbname="postgres", connect_timeout=3)
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def stack(base_settings: Settings) -> Settings:
    """The settings of a running stack; fails (not skips) when a service is down."""
    missing = []
    if not _reachable(base_settings.kafka.bootstrap_servers.split(",")[0]):
        missing.append(f"Kafka at {base_settings.kafka.bootstrap_servers}")
    if not _reachable(f"{base_settings.mqtt.host}:{base_settings.mqtt.port}"):
        missing.append(f"Mosquitto at {base_settings.mqtt.host}:{base_settings.mqtt.port}")
    try:
        _ensure_database(base_settings.db.url)
        psycopg.connect(base_settings.db.url, connect_timeout=3).close()
    except psycopg.Error:
        missing.append("PostgreSQL")
    if missing:
        pytest.fail("the local stack is not running (`iotmon stack up`): " + ", ".join(missing))
    _test_gateway(base_settings)
    return base_settings


def _test_gateway(settings: Settings) -> None:
    """An MQTT gateway account that may publish below every test's topic prefix (tests
    publish as it; the bridge under test logs in with the stack's bridge account)."""
    assert settings.mqtt.auth_dir is not None
    auth = AuthDir(settings.mqtt.auth_dir)
    # Kept across sessions: a session that re-keyed it would lock out the gateways of
    # another session on the same stack at their next reconnect.
    auth.ensure(TEST_GATEWAY, "gateway", write=["test/#"])
    Stack(settings).mosquitto.reload()
    mqtt_login_works(gateway_settings(settings.mqtt))


@pytest.fixture
def test_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def kafka(stack: Settings, test_id: str) -> Iterator[KafkaSettings]:
    """Kafka settings with a topic prefix of this test; the registry's topics exist."""
    settings = stack.kafka.model_copy(update={"topic_prefix": f"test.{test_id}."})
    ensure_topics(settings)
    yield settings
    delete_prefixed_topics(settings)


@pytest.fixture
def group_id(test_id: str) -> str:
    return f"test-{test_id}"


@pytest.fixture
def empty_schema(stack: Settings, test_id: str) -> Iterator[DatabaseSettings]:
    """Database settings pointing at a schema of this test, with no tables yet."""
    settings = stack.db.model_copy(update={"db_schema": f"test_{test_id}"})
    yield settings
    with psycopg.connect(settings.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(settings.db_schema))
        )


@pytest.fixture
def db(empty_schema: DatabaseSettings) -> DatabaseSettings:
    """Database settings of a migrated schema of this test."""
    migrate(empty_schema)
    return empty_schema


@pytest.fixture
def mqtt(stack: Settings, test_id: str) -> Iterator[MqttSettings]:
    """MQTT settings with a topic prefix of this test, logged in as a bridge account of
    this test that may read below the prefix.  The broker uses the account name as the
    client id (use_username_as_clientid), so the account keeps this test's persistent
    session apart from every other test's."""
    assert stack.mqtt.auth_dir is not None
    name = f"bridge-{test_id}"
    prefix = f"test/{test_id}/"
    auth = AuthDir(stack.mqtt.auth_dir)
    auth.save_credential(name, auth.add(name, "service", read=[f"{prefix}#"], replace=True))
    Stack(stack).mosquitto.reload()
    settings = stack.mqtt.model_copy(
        update={
            "topic_prefix": prefix,
            "client_id": name,
            "username": name,
            "password": None,
            "password_file": auth.credential_file(name),
        }
    )
    mqtt_login_works(settings)
    yield settings
    auth.revoke(name)
    Stack(stack).mosquitto.reload()
