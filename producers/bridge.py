"""MQTT -> Kafka bridge.

Subscribes at QoS 1 with a persistent session and hands each message, bytes unchanged, to
the raw readings topic keyed by the sensor id the topic names.  A message is acknowledged to
the MQTT broker only after Kafka confirmed it (manual acks), so a bridge killed at any moment
loses nothing: the broker redelivers what was not acknowledged.  The topic, receive time and
gateway travel as Kafka headers.  Messages on a watched topic that no pattern matches go to
the dead-letter topic (reason ``wrong_topic``).  Payloads are validated downstream, once, by
the ingest stage, whichever way they came in.

Threads: paho's network thread calls :meth:`Bridge.on_message` (produce only); the thread
that runs :meth:`Bridge.run` polls the producer, whose delivery callbacks send the MQTT acks.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from confluent_kafka import KafkaError, Message, Producer
from prometheus_client import CollectorRegistry, Counter, Gauge

from iotmon.settings import BridgeSettings, MqttSettings
from producers.topics import TopicPattern, compile_pattern, match_topic
from schemas.readings import DeadLetterHeaders, DeadLetterReason, IngressHeaders

log = logging.getLogger(__name__)


class BridgeFailed(RuntimeError):
    """Kafka refused a message for good; the bridge stops without acknowledging it."""


class BridgeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter(
            "iotmon_bridge_received_total", "MQTT messages received", registry=registry
        )
        self.forwarded = Counter(
            "iotmon_bridge_forwarded_total",
            "Messages confirmed by Kafka and acknowledged to MQTT",
            registry=registry,
        )
        self.rejected = Counter(
            "iotmon_bridge_rejected_total",
            "Messages sent to the dead-letter topic by the bridge",
            ["reason"],
            registry=registry,
        )
        self.pending = Gauge(
            "iotmon_bridge_pending",
            "Messages handed to Kafka, not yet confirmed",
            registry=registry,
        )


def subscriptions(settings: MqttSettings) -> tuple[list[TopicPattern], list[str]]:
    """The reading patterns, and every MQTT subscription (patterns + watched trees)."""
    patterns = [
        compile_pattern(p, settings.topic_prefix)
        for p in [*settings.topics, *settings.extra_topics]
    ]
    subs = [p.subscription for p in patterns]
    # Watch the whole sensors tree too, so that a message on a wrong topic below it is
    # dead-lettered visibly instead of never being seen.
    watch = f"{settings.topic_prefix}sensors/#"
    if watch not in subs:
        subs.append(watch)
    return patterns, subs


class Bridge:
    def __init__(
        self,
        client: mqtt.Client,
        producer: Producer,
        mqtt_settings: MqttSettings,
        bridge_settings: BridgeSettings,
        raw_topic: str,
        dead_letter_topic: str,
        metrics: BridgeMetrics,
    ) -> None:
        self.client = client
        self.producer = producer
        self.settings = mqtt_settings
        self.limits = bridge_settings
        self.raw_topic = raw_topic
        self.dlq_topic = dead_letter_topic
        self.metrics = metrics
        self.patterns, self.subscriptions = subscriptions(mqtt_settings)
        self._pending = 0
        self._lock = threading.Lock()
        self._failure: BaseException | None = None
        # Set once the broker acknowledged the subscriptions: from then on nothing published
        # to a reading topic is missed (the persistent session queues it while we are away).
        self.subscribed = threading.Event()
        client.on_connect = self._on_connect
        client.on_message = self.on_message
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe

    # -- MQTT side (paho's network thread) ------------------------------------------------
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.error("MQTT connection refused: %s", reason)
            return
        log.info(
            "connected to MQTT (session present: %s); subscribing to %s",
            flags.session_present,
            self.subscriptions,
        )
        qos: int = self.settings.qos
        client.subscribe([(s, qos) for s in self.subscriptions])

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            log.error("MQTT subscription refused: %s", failed)
            return
        self.subscribed.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self.subscribed.clear()
        if reason.is_failure:
            log.warning("MQTT connection lost (%s); paho reconnects", reason)

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """Produce the message; the ack to MQTT is sent when Kafka confirms it."""
        self.metrics.received.inc()
        received_at = datetime.now(UTC).isoformat().encode()
        found = match_topic(self.patterns, msg.topic)
        mid, qos = msg.mid, msg.qos
        headers = [
            (IngressHeaders.MQTT_TOPIC, msg.topic.encode()),
            (IngressHeaders.RECEIVED_AT, received_at),
            (IngressHeaders.SOURCE, b"mqtt"),
        ]
        if found is None:
            topic, key = self.dlq_topic, None
            headers += [
                (DeadLetterHeaders.REASON, DeadLetterReason.WRONG_TOPIC.value.encode()),
                (
                    DeadLetterHeaders.DETAIL,
                    f"MQTT topic {msg.topic!r} matches no reading pattern".encode(),
                ),
                (DeadLetterHeaders.SOURCE, b"mqtt"),
            ]
            self.metrics.rejected.labels(DeadLetterReason.WRONG_TOPIC.value).inc()
        else:
            topic = self.raw_topic
            key = found.sensor_id.encode() if found.sensor_id else None
            if found.gateway:
                headers.append((IngressHeaders.GATEWAY, found.gateway.encode()))

        def delivered(err: KafkaError | None, _message: Message) -> None:
            self._delivered(err, mid, qos)

        with self._lock:
            self._pending += 1
        while True:
            try:
                self.producer.produce(
                    topic,
                    value=bytes(msg.payload),
                    key=key,
                    headers=headers,  # type: ignore[arg-type]
                    on_delivery=delivered,
                )
                break
            except BufferError:
                # librdkafka's queue is full: wait for deliveries (backpressure on MQTT).
                self.producer.flush(0.1)

    # -- Kafka side (the thread in run()) -------------------------------------------------
    def _delivered(self, err: KafkaError | None, mid: int, qos: int) -> None:
        with self._lock:
            self._pending -= 1
        if err is not None:
            # The idempotent producer retried until delivery.timeout.ms: a real outage.
            # Do not ack; the broker redelivers to the restarted bridge.
            self._failure = BridgeFailed(f"Kafka did not take a message: {err}")
            return
        if qos > 0:
            self.client.ack(mid, qos)
        self.metrics.forwarded.inc()

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; then deliver and ack what is in flight, disconnect.

        Raises BridgeFailed when Kafka refused a message (the process should exit non-zero
        and be restarted; nothing unacknowledged is lost).
        """
        self.client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive)
        self.client.loop_start()
        try:
            while not stop.is_set():
                self.producer.poll(0.05)
                self.metrics.pending.set(self.pending)
                if self._failure is not None:
                    raise self._failure
        finally:
            log.info("bridge stopping: unsubscribing, delivering %d pending", self.pending)
            if self.subscribed.is_set():
                self.client.unsubscribe(self.subscriptions)
            remaining = self.producer.flush(30)
            if remaining:
                log.error("%d messages not confirmed by Kafka; MQTT will redeliver them", remaining)
            self.client.disconnect()
            self.client.loop_stop()


def make_client(settings: MqttSettings) -> mqtt.Client:
    """A paho client with a persistent session and manual acks (QoS 1 survives restarts)."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=settings.client_id,
        clean_session=False,
        manual_ack=True,
    )
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    client.max_inflight_messages_set(1000)
    return client
