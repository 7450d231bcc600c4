"""Gateways authenticate: the real Mosquitto of the stack with its password and ACL files,
the real bridge, ingest and Kafka.

Each test creates its own gateway accounts (named after the test) in the stack's auth
directory with ``iotmon gateways``' functions, reloads Mosquitto, and revokes them after.
"""

from __future__ import annotations

import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import paho.mqtt.client as paho
import psycopg
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from iotmon.mqtt_auth import AuthDir, gateway_topics
from iotmon.settings import DatabaseSettings, KafkaSettings, MqttSettings, Settings
from iotmon.stack import Stack
from producers.bridge import Bridge
from producers.gateway import GatewayProducer
from producers.masterdata import MasterData, import_master_data
from producers.mqtt_connect import apply_login
from producers.simulate_cmd import mqtt_topic
from schemas.deadletters import DeadLetterHeaders
from schemas.master import Location, Sensor
from schemas.readings import IngressHeaders, ReadingBatch
from schemas.topics import topic_name
from tests.helpers import (
    headers_of,
    mqtt_login_works,
    read_topic,
    start_bridge,
    value_of,
    wait_connack,
)

pytestmark = pytest.mark.integration


class Gateways:
    """Gateway accounts of one test, on the stack's Mosquitto."""

    def __init__(self, stack: Settings, mqtt: MqttSettings) -> None:
        assert mqtt.auth_dir is not None
        self.auth = AuthDir(mqtt.auth_dir)
        self.stack = Stack(stack)
        self.mqtt = mqtt
        self.names: list[str] = []

    def add(self, name: str) -> MqttSettings:
        password = self.auth.add(name, "gateway", write=gateway_topics(self.mqtt, name))
        self.names.append(name)
        assert self.stack.mosquitto.reload()
        login = self.login(name, password)
        mqtt_login_works(login)
        return login

    def login(self, name: str, password: str) -> MqttSettings:
        return self.mqtt.model_copy(
            update={
                "username": name,
                "password": SecretStr(password),
                "password_file": None,
                "client_id": f"{name}-client",
            }
        )

    def revoke(self, name: str) -> None:
        self.auth.revoke(name)
        self.names.remove(name)
        assert self.stack.mosquitto.reload()

    def close(self) -> None:
        for name in list(self.names):
            self.revoke(name)


def account(settings: MqttSettings) -> str:
    assert settings.username is not None
    return settings.username


@pytest.fixture
def gateways(stack: Settings, mqtt: MqttSettings) -> Iterator[Gateways]:
    g = Gateways(stack, mqtt)
    yield g
    g.close()


class Publisher:
    """An MQTT 5 client of a gateway: a refused publish comes back with its reason."""

    def __init__(self, settings: MqttSettings) -> None:
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=f"pub-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        self.acks: dict[int, str] = {}
        self.client.on_publish = self._on_publish
        apply_login(self.client, settings)
        self.client.connect(settings.host, settings.port)
        self.client.loop_start()
        assert wait_connack(self.client), "the broker refused the gateway's login"

    def _on_publish(
        self, client: object, userdata: object, mid: int, rc: object, p: object
    ) -> None:
        self.acks[mid] = str(rc)

    def publish(self, topic: str, payload: bytes) -> str:
        """The broker's answer to a QoS 1 publish ("Success" or its refusal)."""
        info = self.client.publish(topic, payload, qos=1)
        deadline = time.monotonic() + 10
        while info.mid not in self.acks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.acks.get(info.mid, "no PUBACK")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run_bridge(kafka: KafkaSettings, mqtt: MqttSettings, stop: threading.Event) -> Bridge:
    """A bridge of this test, stopped with ``stop`` (the test's)."""
    bridge, own_stop, _thread = start_bridge(kafka, mqtt)

    def relay() -> None:
        stop.wait()
        own_stop.set()

    threading.Thread(target=relay, daemon=True).start()
    return bridge


def publish_and_read(gw: MqttSettings, kafka: KafkaSettings, key: str, payload: bytes) -> list[Any]:
    """Publish as gateway ``gw`` (refused publishes fail the test) and read the bridged
    topic until the record keyed ``key`` is there."""
    pub = Publisher(gw)
    try:
        assert pub.publish(mqtt_topic(gw, key), payload) == "Success"
    finally:
        pub.close()
    return read_topic(
        kafka,
        topic_name("readings_mqtt", kafka.topic_prefix),
        until=lambda m: any(x.key() == key.encode() for x in m),
    )


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()
    time.sleep(0.5)  # the bridge thread acks what is in flight and disconnects


def connect_result(settings: MqttSettings, *, anonymous: bool = False) -> bool:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    if not anonymous:
        apply_login(client, settings)
    try:
        client.connect(settings.host, settings.port)
        client.loop_start()
        return wait_connack(client, 3)
    finally:
        client.loop_stop()
        client.disconnect()


def test_an_anonymous_client_is_refused(mqtt: MqttSettings) -> None:
    assert not connect_result(mqtt, anonymous=True)
    assert connect_result(mqtt)  # the bridge's account, for contrast


def test_a_gateway_publishes_only_under_its_own_topics(
    gateways: Gateways, kafka: KafkaSettings, mqtt: MqttSettings, stop: threading.Event
) -> None:
    suffix = uuid.uuid4().hex[:6]
    a = gateways.add(f"gw-a-{suffix}")
    b = gateways.add(f"gw-b-{suffix}")
    run_bridge(kafka, mqtt, stop)
    pub = Publisher(a)
    try:
        own = pub.publish(mqtt_topic(a, "S-A"), b'{"from": "a"}')
        others = pub.publish(mqtt_topic(b, "S-B"), b'{"from": "a pretending to be b"}')
        legacy = pub.publish(f"{mqtt.topic_prefix}sensors/S-B/readings", b'{"from": "a, legacy"}')
        last = pub.publish(mqtt_topic(a, "S-LAST"), b'{"from": "a", "last": true}')
    finally:
        pub.close()
    assert own == "Success" and last == "Success"
    assert others == "Not authorized"
    assert legacy == "Not authorized"
    raw = read_topic(
        kafka,
        topic_name("readings_mqtt", kafka.topic_prefix),
        until=lambda m: any(x.key() == b"S-LAST" for x in m),
    )
    # Only gateway A's own messages reached Kafka, each naming gateway A.
    assert [m.key() for m in raw] == [b"S-A", b"S-LAST"]
    assert {headers_of(m)[IngressHeaders.GATEWAY] for m in raw} == {account(a).encode()}


def test_a_revoked_gateway_is_refused_after_the_reload(gateways: Gateways) -> None:
    gw = gateways.add(f"gw-r-{uuid.uuid4().hex[:6]}")
    assert connect_result(gw)
    assert gw.username is not None
    gateways.revoke(gw.username)
    deadline = time.monotonic() + 10
    while connect_result(gw):  # the reload follows the signal within moments
        assert time.monotonic() < deadline, "a revoked gateway could still log in"
        time.sleep(0.1)


def test_a_wrong_password_is_refused(gateways: Gateways) -> None:
    gw = gateways.add(f"gw-p-{uuid.uuid4().hex[:6]}")
    assert gw.username is not None
    assert not connect_result(gateways.login(gw.username, "not-the-password"))


def test_a_gateway_over_tls_reaches_kafka_end_to_end(
    stack: Settings,
    gateways: Gateways,
    kafka: KafkaSettings,
    mqtt: MqttSettings,
    stop: threading.Event,
) -> None:
    assert mqtt.auth_dir is not None
    tls = {
        "tls": True,
        "port": stack.stack.mosquitto_tls_port,
        "ca_file": mqtt.auth_dir / "tls" / "ca.crt",
    }
    gw = gateways.add(f"gw-t-{uuid.uuid4().hex[:6]}").model_copy(update=tls)
    run_bridge(kafka, mqtt.model_copy(update=tls), stop)  # the bridge over TLS too
    raw = publish_and_read(gw, kafka, "S-TLS", b'{"over": "tls"}')
    assert [value_of(m) for m in raw] == [b'{"over": "tls"}']
    assert headers_of(raw[0])[IngressHeaders.GATEWAY] == account(gw).encode()


def test_tls_refuses_a_broker_the_ca_did_not_sign(
    stack: Settings, gateways: Gateways, mqtt: MqttSettings, tmp_path
) -> None:
    """The client verifies the listener's certificate: with another CA it does not connect."""
    from iotmon.mqtt_auth import ensure_tls  # noqa: PLC0415

    other_ca = ensure_tls(tmp_path / "other", ["localhost", "127.0.0.1"])
    gw = gateways.add(f"gw-c-{uuid.uuid4().hex[:6]}").model_copy(
        update={"tls": True, "port": stack.stack.mosquitto_tls_port, "ca_file": other_ca}
    )
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    apply_login(client, gw)
    with pytest.raises(ssl.SSLError):
        client.connect(gw.host, gw.port)


def test_ingest_refuses_readings_of_a_sensor_from_another_gateway(
    stack: Settings,
    gateways: Gateways,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    mqtt: MqttSettings,
    group_id: str,
    stop: threading.Event,
) -> None:
    """Sensor S-1 is assigned to gateway A: A's reading passes; B's, over MQTT with B's
    own valid account, is dead-lettered as wrong_gateway."""
    from stream_apps.ingest.main import build  # noqa: PLC0415

    suffix = uuid.uuid4().hex[:6]
    a = gateways.add(f"gw-a-{suffix}")
    b = gateways.add(f"gw-b-{suffix}")
    location = Location(loc_id="A001", factory="SinPyeong")
    import_master_data(
        db,
        kafka,
        MasterData([location], [Sensor(sensor_id="S-1", loc_id="A001", gateway=a.username)]),
    )
    settings = stack.model_copy(
        update={
            "kafka": kafka,
            "db": db,
            "ingest": stack.ingest.model_copy(update={"group_id": group_id}),
        }
    )
    processor = build(settings, CollectorRegistry())
    thread = threading.Thread(target=processor.run, args=(stop,), daemon=True)
    thread.start()
    run_bridge(kafka, mqtt, stop)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
    reading = {"sensor_id": "S-1", "capture_dt": now, "temperature": 30.5, "humidity": 60}
    try:
        for gw, temperature in ((b, 99.0), (a, 30.5)):
            pub = Publisher(gw)
            try:
                payload = orjson.dumps({**reading, "temperature": temperature})
                assert pub.publish(mqtt_topic(gw, "S-1"), payload) == "Success"
            finally:
                pub.close()
        # Straight into the raw topic, claiming to be gateway A (and MQTT): whoever may
        # write that topic is not the bridge, so the claim is not believed.
        forged = GatewayProducer(kafka, gateway=account(a))
        forged.send_raw(
            "S-1",
            orjson.dumps({**reading, "temperature": 77.0}),
        )
        forged.flush()
        dead = read_topic(
            kafka, topic_name("dead_letters", kafka.topic_prefix), until=lambda m: len(m) >= 2
        )
        accepted = read_topic(
            kafka, topic_name("readings", kafka.topic_prefix), until=lambda m: len(m) >= 1
        )
    finally:
        stop.set()
        thread.join(30)
        processor.consumer.close()
        processor.directory.close()
    assert len(dead) == 2
    by_value = {orjson.loads(value_of(m))["temperature"]: headers_of(m) for m in dead}
    from_b, from_kafka = by_value[99.0], by_value[77.0]  # the bytes each one sent
    assert from_b[DeadLetterHeaders.REASON] == b"wrong_gateway"
    assert account(b).encode() in from_b[DeadLetterHeaders.DETAIL]
    assert from_b[DeadLetterHeaders.SOURCE] == b"mqtt"
    assert from_kafka[DeadLetterHeaders.REASON] == b"wrong_gateway"
    assert b"no gateway" in from_kafka[DeadLetterHeaders.DETAIL]
    assert from_kafka[DeadLetterHeaders.SOURCE] == b"kafka"  # as the producer said
    readings = [r for m in accepted for r in ReadingBatch.model_validate_json(value_of(m)).readings]
    assert [(r.sensor_id, float(r.temperature)) for r in readings] == [("S-1", 30.5)]


def test_a_gateway_cannot_take_over_the_bridges_session(
    gateways: Gateways, kafka: KafkaSettings, mqtt: MqttSettings, stop: threading.Event
) -> None:
    """A gateway that connects with the bridge's client id (clean session or not) neither
    disconnects the bridge nor consumes what is queued for it: the broker makes every
    client id the account name."""
    gw = gateways.add(f"gw-s-{uuid.uuid4().hex[:6]}")
    bridge = run_bridge(kafka, mqtt, stop)
    for clean in (True, False):
        thief = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=mqtt.client_id,  # the bridge's
            protocol=paho.MQTTv311,
            clean_session=clean,
        )
        apply_login(thief, gw)
        thief.connect(gw.host, gw.port)
        thief.loop_start()
        try:
            assert wait_connack(thief)
            time.sleep(0.5)  # a takeover would have disconnected the bridge by now
            assert bridge.subscribed.is_set(), "the bridge lost its session"
        finally:
            thief.loop_stop()
            thief.disconnect()
    raw = publish_and_read(gw, kafka, "S-KEPT", b'{"kept": true}')
    assert [m.key() for m in raw] == [b"S-KEPT"]


def test_a_sensor_registered_automatically_belongs_to_the_gateway_that_first_sent_it(
    stack: Settings,
    gateways: Gateways,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    mqtt: MqttSettings,
    group_id: str,
    stop: threading.Event,
) -> None:
    from stream_apps.ingest.main import build  # noqa: PLC0415

    suffix = uuid.uuid4().hex[:6]
    a = gateways.add(f"gw-a-{suffix}")
    b = gateways.add(f"gw-b-{suffix}")
    settings = stack.model_copy(
        update={
            "kafka": kafka,
            "db": db,
            "ingest": stack.ingest.model_copy(update={"group_id": group_id, "auto_register": True}),
        }
    )
    processor = build(settings, CollectorRegistry())
    thread = threading.Thread(target=processor.run, args=(stop,), daemon=True)
    thread.start()
    run_bridge(kafka, mqtt, stop)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
    reading = {"sensor_id": "NEW-S001", "capture_dt": now, "temperature": 21.5, "humidity": 40}
    try:
        pub = Publisher(a)
        try:
            assert pub.publish(mqtt_topic(a, "NEW-S001"), orjson.dumps(reading)) == "Success"
        finally:
            pub.close()
        read_topic(kafka, topic_name("readings", kafka.topic_prefix), until=lambda m: len(m) >= 1)
        pub = Publisher(b)
        try:
            late = {**reading, "temperature": 66.0}
            assert pub.publish(mqtt_topic(b, "NEW-S001"), orjson.dumps(late)) == "Success"
        finally:
            pub.close()
        dead = read_topic(
            kafka, topic_name("dead_letters", kafka.topic_prefix), until=lambda m: len(m) >= 1
        )
    finally:
        stop.set()
        thread.join(30)
        processor.consumer.close()
        processor.directory.close()
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        row = conn.execute(
            "SELECT gateway, auto_registered FROM sensors WHERE sensor_id = 'NEW-S001'"
        ).fetchone()
    assert row == (account(a), True)
    assert [headers_of(m)[DeadLetterHeaders.REASON] for m in dead] == [b"wrong_gateway"]
