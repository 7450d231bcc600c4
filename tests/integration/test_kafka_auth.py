"""Kafka with authentication on: a second local broker of the stack with
``kafka_auth=scram`` (SASL/SCRAM logins, ACLs, ``allow.everyone.if.no.acl.found=false``),
the principals and ACLs of ``iotmon kafka-access``, and the real components as processes.

The broker is started once for this module on free ports in a temporary directory (it
shares the stack's resolved jars) and stopped after it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from pydantic import SecretStr

from iotmon.credentials import load_or_create_passwords
from iotmon.kafka_access import PRINCIPALS, access_plan, apply, principal_settings
from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from iotmon.stack import infra_dir
from iotmon.stack.kafka import KafkaService
from iotmon.topics import ensure_topics
from producers.gateway import GatewayProducer
from producers.masterdata import MasterData, import_master_data
from producers.thresholds import import_thresholds
from schemas.master import Location, Sensor
from schemas.topics import topic_name
from tests.api_support import OPERATOR, api_settings, live_server
from tests.helpers import read_topic, wait_for
from tests.pipeline import free_port

pytestmark = pytest.mark.integration


class SecureKafka:
    def __init__(self, service: KafkaService, base: KafkaSettings, passwords: Path) -> None:
        self.service = service
        self.admin_base = service.admin_settings(base)
        self.passwords = passwords

    def admin(self, prefix: str) -> KafkaSettings:
        return self.admin_base.model_copy(update={"topic_prefix": prefix})

    def as_principal(self, name: str, prefix: str) -> KafkaSettings:
        return principal_settings(self.admin(prefix), name, self.passwords / name)


@pytest.fixture(scope="module")
def secure_kafka(
    stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecureKafka]:
    home = tmp_path_factory.mktemp("scram-kafka")
    settings = stack.stack.model_copy(
        update={
            "state_dir": home,
            "kafka_port": free_port(),
            "kafka_controller_port": free_port(),
            "kafka_auth": "scram",
            "kafka_heap": "384m",
        }
    )
    service = KafkaService(settings, infra_dir())
    service.up()
    try:
        yield SecureKafka(service, stack.kafka, home / "passwords")
    finally:
        service.down()


@pytest.fixture
def secured(
    secure_kafka: SecureKafka, stack: Settings, test_id: str, db: DatabaseSettings
) -> Settings:
    """Settings of this test on the secure broker (admin login), with the test's topics,
    groups and schema, and every principal's credential and ACLs applied."""
    admin = secure_kafka.admin(f"t{test_id}.")
    settings = stack.model_copy(
        update={
            "kafka": admin,
            "db": db,
            "ingest": stack.ingest.model_copy(update={"group_id": f"ingest-{test_id}"}),
            "worker": stack.worker.model_copy(update={"app_id": f"worker-{test_id}"}),
            "sink": stack.sink.model_copy(update={"group_prefix": f"sink-{test_id}"}),
            "notifier": stack.notifier.model_copy(update={"group_id": f"notifier-{test_id}"}),
        }
    )
    ensure_topics(admin)
    apply(
        admin, access_plan(settings), load_or_create_passwords(secure_kafka.passwords, PRINCIPALS)
    )
    return settings


def produce(kafka: KafkaSettings, topic: str) -> KafkaError | None:
    """One record to ``topic``; the broker's error, or None when it took it."""
    outcome: list[KafkaError | None] = []
    producer = Producer({**kafka.client_config(), "acks": "all", "message.timeout.ms": 15000})
    producer.produce(topic, b"{}", key=b"k", on_delivery=lambda err, _msg: outcome.append(err))
    producer.flush(20)
    assert outcome, "no delivery report"
    return outcome[0]


def test_a_principal_without_the_acl_cannot_write_thresholds(
    secure_kafka: SecureKafka, secured: Settings
) -> None:
    prefix = secured.kafka.topic_prefix
    thresholds = topic_name("thresholds", prefix)
    for principal in ("gateway", "bridge", "ingest", "worker", "sink", "notifier"):
        err = produce(secure_kafka.as_principal(principal, prefix), thresholds)
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, principal
    # Those with the grant can: the API (threshold editor) and the super user.
    assert produce(secure_kafka.as_principal("api", prefix), thresholds) is None
    assert produce(secured.kafka, thresholds) is None
    # Only the worker writes alerts.
    alerts = topic_name("alerts", prefix)
    assert produce(secure_kafka.as_principal("worker", prefix), alerts) is None
    for principal in ("api", "notifier"):
        err = produce(secure_kafka.as_principal(principal, prefix), alerts)
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # A gateway writes the raw topic and nothing else.
    assert (
        produce(secure_kafka.as_principal("gateway", prefix), topic_name("readings_raw", prefix))
        is None
    )
    err = produce(secure_kafka.as_principal("gateway", prefix), topic_name("readings", prefix))
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_a_gateway_cannot_read_nor_join_other_groups(
    secure_kafka: SecureKafka, secured: Settings
) -> None:
    prefix = secured.kafka.topic_prefix
    consumer = Consumer(
        {
            **secure_kafka.as_principal("gateway", prefix).client_config(),
            "group.id": secured.ingest.group_id,  # the ingest stage's group
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([topic_name("readings_raw", prefix)])
        errors: list[KafkaError] = []
        deadline = time.monotonic() + 20
        while not errors and time.monotonic() < deadline:
            try:
                msg = consumer.poll(0.5)
            except KafkaException as exc:
                errors.append(exc.args[0])
                continue
            error = msg.error() if msg is not None else None
            if error is not None:
                errors.append(error)
        assert errors, "a gateway principal could consume"
        assert errors[0].code() in (
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
            KafkaError.GROUP_AUTHORIZATION_FAILED,
        )
    finally:
        consumer.close()


def test_the_notifier_reads_alerts_in_its_group_and_writes_dead_letters_only(
    secure_kafka: SecureKafka, secured: Settings
) -> None:
    prefix = secured.kafka.topic_prefix
    alerts = topic_name("alerts", prefix)
    assert produce(secure_kafka.as_principal("worker", prefix), alerts) is None
    notifier = secure_kafka.as_principal("notifier", prefix)
    got = read_topic(
        notifier, alerts, until=lambda m: len(m) >= 1, timeout=30, group=secured.notifier.group_id
    )
    assert len(got) == 1
    # Its unreadable records go to the dead letters; nothing else is written.
    assert produce(notifier, topic_name("dead_letters", prefix)) is None
    err = produce(notifier, topic_name("readings", prefix))
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # Another component's group is not its own.
    consumer = Consumer(
        {
            **notifier.client_config(),
            "group.id": secured.ingest.group_id,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([alerts])
        errors: list[KafkaError] = []
        deadline = time.monotonic() + 20
        while not errors and time.monotonic() < deadline:
            try:
                msg = consumer.poll(0.5)
            except KafkaException as exc:
                errors.append(exc.args[0])
                continue
            error = msg.error() if msg is not None else None
            if error is not None:
                errors.append(error)
        assert errors and errors[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED, errors
    finally:
        consumer.close()


def test_wrong_passwords_and_plaintext_clients_get_nothing(
    secure_kafka: SecureKafka, secured: Settings
) -> None:
    prefix = secured.kafka.topic_prefix
    raw = topic_name("readings_raw", prefix)
    wrong = secure_kafka.as_principal("gateway", prefix).model_copy(
        update={"sasl_password_file": None, "sasl_password": SecretStr("not-the-password")}
    )
    err = produce(wrong, raw)
    assert err is not None
    assert err.code() in (KafkaError._AUTHENTICATION, KafkaError._MSG_TIMED_OUT), err
    plaintext = wrong.model_copy(update={"security_protocol": "PLAINTEXT"})
    err = produce(plaintext, raw)
    assert err is not None  # the listener speaks SASL only: nothing is written


def _env(settings: Settings, principal: str, secure: SecureKafka, tmp: Path) -> dict[str, str]:
    k = settings.kafka
    return {
        **os.environ,
        "IOTMON_KAFKA__BOOTSTRAP_SERVERS": k.bootstrap_servers,
        "IOTMON_KAFKA__TOPIC_PREFIX": k.topic_prefix,
        "IOTMON_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "IOTMON_KAFKA__SASL_USERNAME": principal,
        "IOTMON_KAFKA__SASL_PASSWORD_FILE": str(secure.passwords / principal),
        "IOTMON_DB__URL": settings.db.url,
        "IOTMON_DB__DB_SCHEMA": settings.db.db_schema,
        "IOTMON_INGEST__GROUP_ID": settings.ingest.group_id,
        "IOTMON_INGEST__METRICS_PORT": str(free_port()),
        "IOTMON_WORKER__APP_ID": settings.worker.app_id,
        "IOTMON_WORKER__WEB_PORT": str(free_port()),
        "IOTMON_WORKER__METRICS_PORT": str(free_port()),
        "IOTMON_WORKER__TICK_INTERVAL_S": "1",
        "IOTMON_WORKER__IDLE_CLOSE_S": "3",
        "IOTMON_SINK__GROUP_PREFIX": settings.sink.group_prefix,
        "IOTMON_SINK__METRICS_PORT": str(free_port()),
        "IOTMON_STACK__STATE_DIR": str(tmp / "state"),
    }


def test_the_pipeline_works_end_to_end_with_its_own_principals(
    secure_kafka: SecureKafka, secured: Settings, tmp_path: Path
) -> None:
    """Gateway (principal gateway) -> ingest (ingest) -> worker (worker) -> sinks (sink)
    -> PostgreSQL, each process logged in as its own principal with only its ACLs."""
    prefix = secured.kafka.topic_prefix
    sensors = [f"SEC-S{n:03d}" for n in range(5)]
    import_master_data(
        secured.db,
        secured.kafka,  # master data and thresholds: imported by an operator (admin)
        MasterData(
            [Location(loc_id=s[-4:], factory="SinPyeong") for s in sensors],
            [Sensor(sensor_id=s, loc_id=s[-4:]) for s in sensors],
        ),
    )
    import_thresholds(
        secured.db,
        secured.kafka,
        [{"threshold_type": "temperature", "level": "red", "min_value": 40, "hold_seconds": 0}],
    )
    procs = []
    for principal, command in (
        ("ingest", "ingest"),
        ("worker", "worker"),
        ("sink", "sink"),
    ):
        log = (tmp_path / f"{principal}.log").open("ab")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "iotmon", command],
                env=_env(secured, principal, secure_kafka, tmp_path),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    try:
        now = datetime.now(UTC) - timedelta(seconds=30)
        with GatewayProducer(secure_kafka.as_principal("gateway", prefix)) as gw:
            for i, sensor in enumerate(sensors):
                hot = 45.0 if i == 0 else 22.0
                for n in range(3):
                    at = (now + timedelta(seconds=n)).isoformat().replace("+00:00", "Z")
                    gw.send(
                        {"sensor_id": sensor, "capture_dt": at, "temperature": hot, "humidity": 50}
                    )

        def stored() -> bool:
            with psycopg.connect(secured.db.url) as conn:
                conn.execute(f'SET search_path TO "{secured.db.db_schema}"')
                readings = conn.execute("SELECT count(*) FROM readings").fetchone()
                hourly = conn.execute(
                    "SELECT count(DISTINCT sensor_id) FROM hourly_aggregates"
                ).fetchone()
                alerts = conn.execute(
                    "SELECT count(*) FROM alerts WHERE sensor_id = %s AND alert_type = %s",
                    (sensors[0], "temperature"),
                ).fetchone()
            return readings == (15,) and hourly == (5,) and alerts == (1,)

        try:
            wait_for(stored, timeout=120, what="readings, hourly aggregates and the alert stored")
        except AssertionError:
            for p in procs:
                p.terminate()
            logs = "\n".join(
                f"--- {f.name}\n{f.read_text()[-3000:]}" for f in sorted(tmp_path.glob("*.log"))
            )
            raise AssertionError(f"pipeline did not deliver; logs:\n{logs}") from None
        for p in procs:
            assert p.poll() is None, "a component exited"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    # No component was refused anything it needs: their logs hold no authorization error.
    for f in tmp_path.glob("*.log"):
        text = f.read_text()
        assert "AUTHORIZATION_FAILED" not in text and "AuthorizationFailed" not in text, f.name


def test_the_api_works_with_its_own_principal(secure_kafka: SecureKafka, secured: Settings) -> None:
    """Readiness (Kafka admin client), the live-topic reader and the threshold editor's
    publish, logged in as ``api``."""
    prefix = secured.kafka.topic_prefix
    settings = api_settings(secured, secure_kafka.as_principal("api", prefix), secured.db)
    band = {"threshold_type": "humidity", "level": "warning", "min_value": "80.00"}
    with live_server(settings) as base, httpx.Client(base_url=base, timeout=30) as client:
        ready = client.get("/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["kafka"] is True
        created = client.post("/api/v1/thresholds/", json=band, headers=OPERATOR)
        assert created.status_code == 201, created.text
        threshold_id = str(created.json()["threshold_id"]).encode()
    published = read_topic(
        secure_kafka.as_principal("worker", prefix),
        topic_name("thresholds", prefix),
        until=lambda m: any(x.key() == threshold_id for x in m),
        timeout=20,
        group=f"{prefix}{secured.worker.app_id}-reader",  # a group the worker may use
    )
    assert any(m.key() == threshold_id for m in published)
