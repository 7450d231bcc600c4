"""MQTT -> Kafka bridge.

Subscribes at QoS 1 with a persistent session and hands each message, bytes unchanged, to
the raw readings topic keyed by the sensor id the topic names.  A message is acknowledged to
the MQTT broker only after Kafka confirmed it (manual acks), so a bridge killed at any moment
loses nothing: the broker redelivers what was not acknowledged.  The topic, receive time and
gateway travel as Kafka headers.  Messages on a watched topic that no pattern matches go to
the dead-letter topic (reason ``wrong_topic``).  Payloads are validated downstream, once, by
the ingest stage, whichever way they came in.

One thread does everything: :meth:`Bridge.run` drives paho through its external-loop API
(``loop_read``/``loop_write``/``loop_misc`` on the client's socket) and polls the producer,
whose delivery callbacks send the MQTT acks.  With paho's own network thread, every ack from
the Kafka side woke that thread through a socket pair, and the two threads traded the GIL
per message: that was a third of the bridge's time.  Reconnection (after the broker
restarted or the network broke) is done by :meth:`Bridge.run` with capped backoff.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import CollectorRegistry, Counter, Gauge

from iotmon.settings import BridgeSettings, MqttSettings
from producers.kafka import RECORD_REFUSED, TOO_LARGE, error_code, produce
from producers.mqtt_connect import REFUSED_LOGIN_HINT, apply_login, refused_login
from producers.topics import TopicPattern, compile_pattern, match_topic
from schemas.deadletters import (
    MAX_PAYLOAD_BYTES,
    SMALL_PAYLOAD_BYTES,
    DeadLetterReason,
    Stage,
    dead_letter,
)
from schemas.readings import IngressHeaders

log = logging.getLogger(__name__)


MIN_RECONNECT_S, MAX_RECONNECT_S = 1.0, 10.0  # backoff between MQTT connection attempts


class BridgeFailed(RuntimeError):
    """Kafka did not take a message (unreachable); the bridge stops without acknowledging
    it."""


class BridgeConfigError(ValueError):
    """The bridge's settings cannot give the delivery it promises."""


# What a record costs beyond its key, value and headers (record and batch framing).
RECORD_OVERHEAD = 512


def record_size(value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    """An upper bound of the bytes Kafka counts for one record in a batch of its own."""
    return len(value) + len(key or b"") + sum(len(k) + len(v) for k, v in headers) + RECORD_OVERHEAD


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
        self.retained_skipped = Counter(
            "iotmon_bridge_retained_skipped_total",
            "Retained copies of readings the broker sent at subscription time, not forwarded",
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
    # Watch the whole tree below each pattern's first level too (sensors/#, gateways/#), so
    # that a message on a wrong topic there is dead-lettered visibly instead of never
    # being seen.
    for pattern in [*settings.topics, *settings.extra_topics]:
        first = pattern.split("/", 1)[0]
        watch = f"{settings.topic_prefix}{first}/#"
        if first not in ("+", "#", "{sensor_id}", "{gateway}") and watch not in subs:
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
        max_record_bytes: int = 2 * 1024 * 1024,
    ) -> None:
        if mqtt_settings.qos == 2:
            raise BridgeConfigError(
                "IOTMON_MQTT__QOS=2 is not supported by the bridge: at QoS 2 the broker"
                " counts a message as delivered once the bridge has received it (PUBREC),"
                " before Kafka confirmed it, so a bridge stopped in between would lose it."
                " QoS 1 (the default) with the bridge's persistent session loses nothing;"
                " set IOTMON_MQTT__QOS=1"
            )
        self.max_record_bytes = max_record_bytes
        self.client = client
        self.producer = producer
        self.settings = mqtt_settings
        self.limits = bridge_settings
        self.raw_topic = raw_topic
        self.dlq_topic = dead_letter_topic
        self.metrics = metrics
        self.patterns, self.subscriptions = subscriptions(mqtt_settings)
        self._pending = 0
        self._messages = 0  # received, for the read loop
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
            hint = f"; {REFUSED_LOGIN_HINT}" if refused_login(reason) else ""
            log.error("MQTT connection refused: %s%s", reason, hint)
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
        """Produce the message; the ack to MQTT is sent when Kafka confirms it.

        The poison-message boundary: a message that cannot become a raw record (larger than
        a Kafka record may be, or refused by the producer) or that fails for any other
        reason is dead-lettered instead, in a form that fits, and acknowledged once the
        dead letter is confirmed.  Redelivering it to every restart would stop the bridge
        for good on one message."""
        self._messages += 1
        self.metrics.received.inc()
        if msg.retain:
            # The broker sets the flag only on what it sends because a subscription was
            # made (the retained copy of an old message); everything published while we are
            # subscribed, or queued in our session, comes without it.  So this reading was
            # forwarded when it was published, or was published before anyone listened:
            # taking it again would replay it (even one of a gateway revoked since).
            self.metrics.retained_skipped.inc()
            self.client.ack(msg.mid, msg.qos)
            return
        payload = bytes(msg.payload)
        try:
            self._forward(msg, payload)
        except KafkaException as exc:
            too_large = error_code(exc) in TOO_LARGE
            reason = DeadLetterReason.TOO_LARGE if too_large else DeadLetterReason.INTERNAL_ERROR
            self._dead_letter(msg, payload, reason, f"Kafka refused the message: {exc}", exc)
        except Exception as exc:  # the boundary: this message, not the bridge
            log.exception("MQTT message on %r failed; dead-lettered", msg.topic)
            self._dead_letter(
                msg,
                payload,
                DeadLetterReason.INTERNAL_ERROR,
                f"{type(exc).__name__}: {exc}",
                exc,
            )

    def _forward(self, msg: mqtt.MQTTMessage, payload: bytes) -> None:
        received_at = datetime.now(UTC).isoformat().encode()
        mqtt_topic = msg.topic  # UnicodeDecodeError for a topic that is not UTF-8
        found = match_topic(self.patterns, mqtt_topic)
        headers = [
            (IngressHeaders.MQTT_TOPIC, mqtt_topic.encode()),
            (IngressHeaders.RECEIVED_AT, received_at),
            (IngressHeaders.SOURCE, b"mqtt"),
        ]
        if found is None:
            self._dead_letter(
                msg,
                payload,
                DeadLetterReason.WRONG_TOPIC,
                f"MQTT topic {mqtt_topic!r} matches no reading pattern",
                headers=headers,
            )
            return
        key = found.sensor_id.encode() if found.sensor_id else None
        if found.gateway:
            headers.append((IngressHeaders.GATEWAY, found.gateway.encode()))
        size = record_size(payload, key, headers)
        if size > self.max_record_bytes:
            self._dead_letter(
                msg,
                payload,
                DeadLetterReason.TOO_LARGE,
                f"a record of {size} bytes is more than Kafka takes ({self.max_record_bytes})",
                headers=headers,
                key=key,
            )
            return
        self._produce(self.raw_topic, payload, key, headers, msg, payload)

    def _dead_letter(
        self,
        msg: mqtt.MQTTMessage,
        payload: bytes,
        reason: DeadLetterReason,
        detail: str,
        error: BaseException | None = None,
        *,
        headers: list[tuple[str, bytes]] | None = None,
        key: bytes | None = None,
    ) -> None:
        """Send the dead letter of ``msg``; it is acknowledged once Kafka confirmed that."""
        self.metrics.rejected.labels(reason.value).inc()
        if headers is None:
            # paho's topic property raises for a topic that is not UTF-8: keep its bytes.
            headers = [(IngressHeaders.MQTT_TOPIC, msg._topic), (IngressHeaders.SOURCE, b"mqtt")]
        for limit in (MAX_PAYLOAD_BYTES, SMALL_PAYLOAD_BYTES):
            record = dead_letter(
                reason=reason,
                detail=detail,
                stage=Stage.BRIDGE,
                payload=payload,
                key=key,
                error=error,
                source=b"mqtt",
                passthrough=headers,
                max_payload=limit,
            )
            try:
                self._produce(self.dlq_topic, record.value, record.key, record.headers, msg, None)
                return
            except KafkaException as exc:
                # This producer takes less than the topic: keep fewer of the first bytes.
                if limit == SMALL_PAYLOAD_BYTES or error_code(exc) not in TOO_LARGE:
                    raise

    def _produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
        msg: mqtt.MQTTMessage,
        original: bytes | None,
    ) -> None:
        """Produce; the MQTT ack (or, for a record of ``original`` that Kafka refuses for
        good, its dead letter) follows the delivery report."""
        mid, qos = msg.mid, msg.qos

        def delivered(err: KafkaError | None, _message: Message) -> None:
            if err is not None and original is not None and err.code() in RECORD_REFUSED:
                # Refused because of what it is, not because Kafka is away: dead-letter it.
                with self._lock:
                    self._pending -= 1
                self._dead_letter(
                    msg, original, DeadLetterReason.TOO_LARGE, f"Kafka refused it: {err}"
                )
                return
            self._delivered(err, mid, qos)

        produce(self.producer, topic, value, key=key, headers=headers, on_delivery=delivered)
        with self._lock:
            self._pending += 1

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

    def _connect(self, first: bool) -> bool:
        """One connection attempt; False when the broker cannot be reached now."""
        try:
            if first:
                self.client.connect(self.settings.host, self.settings.port, self.settings.keepalive)
            else:
                self.client.reconnect()
        except OSError as exc:
            log.warning(
                "MQTT broker %s:%d unreachable: %s", self.settings.host, self.settings.port, exc
            )
            return False
        return True

    def _serve(self, sock: Any, timeout: float) -> bool:
        """One round of network I/O on the MQTT socket; False when the connection broke."""
        client = self.client
        want_write = client.want_write()
        readable, writable, _ = select.select([sock], [sock] if want_write else [], [], timeout)
        ok = mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        if readable:
            # loop_read() handles one packet; keep reading while they are messages (one
            # select per message was most of the remaining cost).
            for _ in range(256):
                before = self._messages
                if client.loop_read() != ok:
                    return False
                if self._messages == before:
                    break
        if (writable or client.want_write()) and client.loop_write() != ok:
            return False
        return client.loop_misc() == ok  # keepalive pings; detects a dead connection

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; then deliver and ack what is in flight, disconnect.

        Raises BridgeFailed when Kafka refused a message (the process should exit non-zero
        and be restarted; nothing unacknowledged is lost).
        """
        first, connected = True, False
        delay, next_attempt = MIN_RECONNECT_S, 0.0
        try:
            while not stop.is_set():
                if not connected and time.monotonic() >= next_attempt:
                    connected = self._connect(first)
                    if connected:
                        first, delay = False, MIN_RECONNECT_S
                    else:
                        next_attempt = time.monotonic() + delay
                        delay = min(delay * 2, MAX_RECONNECT_S)
                sock = self.client.socket() if connected else None
                if sock is None:
                    connected = False
                    self.producer.poll(0.05)  # deliveries go on; their acks wait for MQTT
                else:
                    if not self._serve(sock, 0.005):
                        connected = False
                        self.subscribed.clear()
                        next_attempt = time.monotonic() + delay
                    # Delivery reports: acks to MQTT (queued during a callback, written by
                    # the next loop_write, or at once otherwise).
                    self.producer.poll(0)
                self.metrics.pending.set(self.pending)
                if self._failure is not None:
                    raise self._failure
        finally:
            log.info("bridge stopping: delivering %d pending", self.pending)
            self._shutdown()

    def _shutdown(self) -> None:
        """Deliver and acknowledge what is in flight, then disconnect, keeping the
        subscriptions: the broker queues what gateways publish meanwhile in the bridge's
        persistent session and hands it to the next bridge.  (Unsubscribing here, as this
        once did, made the broker drop every message published while the bridge was down,
        after acknowledging it to the gateway.)  Nothing more is read: a message that
        arrives now stays unacknowledged and is redelivered."""
        client = self.client
        deadline = time.monotonic() + 30
        while self.pending and time.monotonic() < deadline:
            self.producer.poll(0.05)
            if client.socket() is not None and client.want_write():
                client.loop_write()  # the acks of what Kafka confirmed meanwhile
        remaining = self.producer.flush(max(0.0, deadline - time.monotonic()))
        if remaining:
            log.error("%d messages not confirmed by Kafka; MQTT will redeliver them", remaining)
        if client.socket() is not None:
            client.disconnect()
            sock = client.socket()
            while sock is not None and client.want_write():
                if not self._serve(sock, 0.1):
                    break
                sock = client.socket()


def make_client(settings: MqttSettings) -> mqtt.Client:
    """A paho client with a persistent session and manual acks (QoS 1 survives restarts)."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=settings.client_id,
        clean_session=False,
        manual_ack=True,
    )
    client.max_inflight_messages_set(1000)
    apply_login(client, settings)
    return client
