"""``iotmon simulate``: publish the simulator's messages through MQTT or Kafka, paced in real time.

The plan and its messages come from :mod:`producers.simulator` (pure logic); this module paces
them (:func:`run_simulation`), hands them to a :class:`Publisher` (MQTT or Kafka) and counts a
message as published only once the broker confirmed it (PUBACK at QoS 1, a Kafka delivery
report with ``acks=all``).  Many messages stay in flight; nothing waits for each one.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Protocol
from zoneinfo import ZoneInfo

import orjson
import paho.mqtt.client as mqtt
import psycopg
import typer
from confluent_kafka import KafkaError, Producer
from confluent_kafka import Message as KafkaMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode
from rich.console import Console
from rich.live import Live
from rich.table import Table

from iotmon.cli_settings import settings_or_exit
from iotmon.settings import BRIDGE_ACCOUNT, KafkaSettings, MqttSettings
from producers.kafka import make_producer
from producers.masterdata import import_master_data
from producers.mqtt_connect import REFUSED_LOGIN_HINT, apply_login, refused_login
from producers.simulator import (
    Message,
    Scenarios,
    SimulationPlan,
    build_plan,
    default_start,
    expected_span_s,
    ground_truth,
    iso_z,
    master_data,
    messages,
)
from schemas.common import DEFAULT_TIMEZONE
from schemas.readings import IngressHeaders
from schemas.topics import topic_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """The broker's answer for one message: ``error is None`` means confirmed."""

    message: Message
    error: str | None = None


class Publisher(Protocol):
    """Sends messages without waiting for each; reports confirmations as they come."""

    @property
    def in_flight(self) -> int:
        """Messages handed to :meth:`publish` and not yet reported by drain/close."""
        ...

    def publish(self, message: Message) -> None:
        """Start sending; returns at once.  Raises on a fault that no retry will fix."""
        ...

    def drain(self, timeout_s: float) -> list[Delivery]:
        """Outcomes since the last call; waits up to ``timeout_s`` when there are none yet."""
        ...

    def close(self, timeout_s: float) -> list[Delivery]:
        """Wait up to ``timeout_s`` for everything in flight, disconnect, return the rest of
        the outcomes (unconfirmed messages come back with an error)."""
        ...


def mqtt_topic(settings: MqttSettings, sensor_id: str) -> str:
    """Where the gateway ``settings.username`` publishes a sensor's readings: the first
    reading pattern that names ``{gateway}`` (the only topics its account may write), else
    the first pattern."""
    patterns = settings.topics
    named = [p for p in patterns if "{gateway}" in p.split("/")]
    pattern = named[0] if named and settings.username else patterns[0]
    if "{gateway}" in pattern.split("/") and not settings.username:
        raise ValueError(f"topic pattern {pattern!r} needs a gateway account name")
    levels = [
        sensor_id
        if level == "{sensor_id}"
        else str(settings.username)
        if level == "{gateway}"
        else level
        for level in pattern.split("/")
    ]
    return settings.topic_prefix + "/".join(levels)


def gateway_login(settings: MqttSettings, gateway: str | None) -> MqttSettings:
    """The MQTT settings of a simulated gateway: the account ``gateway`` (or the one the
    settings name, if it is not the bridge's), its password from the settings or else
    saved by ``iotmon gateways add --save``.  ValueError when there is no gateway account."""
    name = gateway or (settings.username if settings.username != BRIDGE_ACCOUNT else None)
    if not name:
        raise ValueError(
            "publishing over MQTT needs a gateway account: --gateway NAME (create one with "
            "`iotmon gateways add NAME --save`) or IOTMON_MQTT__USERNAME/PASSWORD"
        )
    if name == settings.username and (
        settings.password is not None or settings.password_file is not None
    ):
        return settings  # the account and password the settings name
    saved = settings.auth_dir / "credentials" / name if settings.auth_dir else None
    return settings.model_copy(update={"username": name, "password": None, "password_file": saved})


class MqttPublisher:
    """paho-mqtt 2.x publisher at ``settings.qos``; confirmations arrive on paho's thread
    and are handed over through a queue (the bookkeeping stays on the caller's thread)."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str | None = None,
        connect_timeout_s: float = 10.0,
        window: int = 1000,
    ) -> None:
        self._settings = settings
        self._acks: queue.SimpleQueue[tuple[int, str | None]] = queue.SimpleQueue()
        self._pending: dict[int, Message] = {}
        self._connected = threading.Event()
        # Never the bridge's client id: the broker would disconnect the bridge.
        cid = client_id or f"iotmon-sim-{uuid.uuid4().hex[:8]}"
        # MQTT 5: a publish the broker refuses (a topic the account may not write) comes
        # back with its reason instead of being dropped in silence.
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        apply_login(self._client, settings)
        self._client.max_inflight_messages_set(window)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.connect(settings.host, settings.port, settings.keepalive)
        self._client.loop_start()
        if not self._connected.wait(connect_timeout_s):
            self._client.loop_stop()
            raise ConnectionError(f"MQTT broker {settings.host}:{settings.port} did not accept")

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        if rc.is_failure:
            hint = f"; {REFUSED_LOGIN_HINT}" if refused_login(rc) else ""
            log.error("MQTT connection refused: %s%s", rc, hint)
        else:
            self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        if rc.is_failure:
            log.warning(
                "MQTT disconnected (%s); paho reconnects and resends in-flight messages", rc
            )

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode, props: Any
    ) -> None:
        self._acks.put((mid, str(rc) if rc.is_failure else None))

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def publish(self, message: Message) -> None:
        topic = mqtt_topic(self._settings, message.sensor_id)
        info = self._client.publish(topic, message.payload, qos=self._settings.qos)
        # NO_CONN: paho keeps QoS>0 messages and sends them once reconnected.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise ConnectionError(f"MQTT publish failed: {mqtt.error_string(info.rc)}")
        self._pending[info.mid] = message

    def drain(self, timeout_s: float) -> list[Delivery]:
        out: list[Delivery] = []
        try:
            item = self._acks.get(timeout=timeout_s) if timeout_s > 0 else self._acks.get_nowait()
            while True:
                mid, error = item
                message = self._pending.pop(mid, None)
                if message is not None:
                    out.append(Delivery(message, error))
                item = self._acks.get_nowait()
        except queue.Empty:
            return out

    def close(self, timeout_s: float) -> list[Delivery]:
        out: list[Delivery] = []
        deadline = time.monotonic() + timeout_s
        while self._pending and (left := deadline - time.monotonic()) > 0:
            out.extend(self.drain(min(left, 0.1)))
        self._client.disconnect()
        self._client.loop_stop()
        out.extend(self.drain(0))
        out.extend(Delivery(m, "not confirmed before close") for m in self._pending.values())
        self._pending.clear()
        return out


class KafkaPublisher:
    """confluent-kafka producer to the raw readings topic, keyed by sensor id."""

    def __init__(
        self, settings: KafkaSettings, producer: Producer | None = None, gateway: str | None = None
    ) -> None:
        self._producer = producer or make_producer(settings)
        self._topic = topic_name("readings_raw", settings.topic_prefix)
        self._headers: list[tuple[str, str | bytes | None]] | None = (
            [(IngressHeaders.GATEWAY, gateway.encode())] if gateway else None
        )
        self._done: list[Delivery] = []
        self._pending: dict[int, Message] = {}
        self._ids = itertools.count()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def _callback(self, ident: int) -> Callable[[KafkaError | None, KafkaMessage], None]:
        def on_delivery(err: KafkaError | None, _msg: KafkaMessage) -> None:
            message = self._pending.pop(ident)
            self._done.append(Delivery(message, None if err is None else str(err)))

        return on_delivery

    def publish(self, message: Message) -> None:
        ident = next(self._ids)
        self._pending[ident] = message
        while True:
            try:
                self._producer.produce(
                    self._topic,
                    key=message.sensor_id.encode(),
                    value=message.payload,
                    headers=self._headers,
                    on_delivery=self._callback(ident),
                )
                break
            except BufferError:  # librdkafka's queue is full: let deliveries drain
                self._producer.poll(0.1)
        self._producer.poll(0)

    def drain(self, timeout_s: float) -> list[Delivery]:
        self._producer.poll(timeout_s)
        out, self._done = self._done, []
        return out

    def close(self, timeout_s: float) -> list[Delivery]:
        self._producer.flush(timeout_s)
        out, self._done = self._done, []
        out.extend(Delivery(m, "not confirmed before close") for m in self._pending.values())
        self._pending.clear()
        return out


@dataclass
class SimulationResult:
    """Counts of a run; ``published`` are confirmed by the broker."""

    sent: int = 0
    published: int = 0
    failed: int = 0
    malformed: int = 0  # published messages with at least one broken reading
    duplicates: int = 0  # published redeliveries
    readings: int = 0  # readings in published messages
    in_flight: int = 0
    elapsed_s: float = 0.0
    sim_time: datetime | None = None  # capture time of the last message sent
    interrupted: bool = False


class _Run:
    """The bookkeeping of one :func:`run_simulation`: counts the publisher's outcomes into
    :attr:`result`, paces the sending by ticks of the clock and reports each tick."""

    def __init__(
        self,
        publisher: Publisher,
        clock: Callable[[], float],
        on_published: Callable[[Delivery], None] | None,
        on_tick: Callable[[SimulationResult], None] | None,
    ) -> None:
        self.result = SimulationResult()
        self._publisher = publisher
        self._clock = clock
        self._on_published = on_published
        self._on_tick = on_tick
        self._t0 = self._last_tick = clock()

    def settle(self, deliveries: list[Delivery]) -> None:
        """Count the outcomes; ``on_published`` gets each confirmed message."""
        result = self.result
        for d in deliveries:
            if d.error is not None:
                result.failed += 1
                # A broker outage fails thousands at once: show a few, count them all.
                if result.failed <= 10:
                    log.warning("message of %s not published: %s", d.message.sensor_id, d.error)
                continue
            result.published += 1
            result.readings += len(d.message.readings)
            result.malformed += not d.message.valid
            result.duplicates += d.message.duplicate
            if self._on_published is not None:
                self._on_published(d)

    def tick(self) -> None:
        self._last_tick = self._clock()
        self.result.elapsed_s = self._last_tick - self._t0
        self.result.in_flight = self._publisher.in_flight
        if self._on_tick is not None:
            self._on_tick(self.result)

    def stops_before(
        self, message: Message, count: int | None, duration_s: float | None, paced: bool
    ) -> bool:
        """Whether the run ends before ``message``: ``count`` messages were sent, or
        ``duration_s`` passed (paced: or the message is due after it)."""
        if count is not None and self.result.sent >= count:
            return True
        elapsed = self._clock() - self._t0
        return duration_s is not None and (
            elapsed >= duration_s or (paced and message.due_s >= duration_s)
        )

    def start_tick(self, due_s: float, tick_s: float) -> float:
        """Wait for the start of the tick that holds ``due_s`` (settling the outcomes that
        arrive meanwhile), report it, and return its end."""
        tick_start = math.floor(due_s / tick_s) * tick_s
        while (left := self._t0 + tick_start - self._clock()) > 0:
            self.settle(self._publisher.drain(min(left, tick_s)))
        self.tick()
        return tick_start + tick_s

    def tick_if_due(self, tick_s: float) -> None:
        """Settle and report, if ``tick_s`` passed since the last report (between the
        ticks a paced run waits for, and throughout an unpaced one)."""
        if self._clock() - self._last_tick >= tick_s:
            self.settle(self._publisher.drain(0))
            self.tick()

    def wait_for_room(self, max_in_flight: int, tick_s: float) -> None:
        while self._publisher.in_flight >= max_in_flight:
            self.settle(self._publisher.drain(tick_s))


def run_simulation(
    plan: SimulationPlan,
    publisher: Publisher,
    *,
    count: int | None = None,
    duration_s: float | None = None,
    paced: bool = True,
    tick_s: float = 0.05,
    max_in_flight: int = 10_000,
    close_timeout_s: float = 30.0,
    on_published: Callable[[Delivery], None] | None = None,
    on_tick: Callable[[SimulationResult], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> SimulationResult:
    """Publish the plan's messages until ``count`` were sent or ``duration_s`` wall seconds
    passed (or Ctrl-C), then wait up to ``close_timeout_s`` for confirmations.

    Paced, messages go out per tick of ``tick_s``: the tick's start is ``start + k * tick_s``
    on the clock (no drift), and a run that fell behind sends without sleeping until it caught
    up.  Unpaced, messages go out as fast as the publisher takes them.  ``on_published`` is
    called (on this thread) for every confirmed message, ``on_tick`` about once per tick.
    Publisher errors propagate after the publisher was closed.
    """
    run = _Run(publisher, clock, on_published, on_tick)
    result = run.result
    tick_end = 0.0
    try:
        for msg in messages(plan):
            if run.stops_before(msg, count, duration_s, paced):
                break
            if paced and msg.due_s >= tick_end:
                tick_end = run.start_tick(msg.due_s, tick_s)
            else:
                run.tick_if_due(tick_s)
            run.wait_for_room(max_in_flight, tick_s)
            publisher.publish(msg)
            result.sent += 1
            result.sim_time = msg.readings[-1].capture_dt
    except KeyboardInterrupt:
        result.interrupted = True
        log.info("interrupted: waiting for the messages in flight")
    finally:
        run.settle(publisher.close(close_timeout_s))
    run.tick()
    return result


class Recorder:
    """Appends one JSON line per published message (the ground truth of loss tests);
    with no path it records nothing."""

    def __init__(self, path: Path | None) -> None:
        self._file = path.open("ab") if path is not None else None

    def __call__(self, delivery: Delivery) -> None:
        if self._file is None:
            return
        doc = ground_truth(delivery.message)
        doc["published_at"] = iso_z(datetime.now(UTC))
        self._file.write(orjson.dumps(doc) + b"\n")

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()


class ProgressView:
    """A rich live panel (on stderr): rate, totals, elapsed, simulated time."""

    def __init__(self, title: str, window_s: float = 3.0) -> None:
        self._title = title
        self._samples: deque[tuple[float, int]] = deque()
        self._window_s = window_s
        self._last_render = 0.0
        self.live = Live(console=Console(stderr=True), refresh_per_second=4, transient=False)

    def __call__(self, result: SimulationResult) -> None:
        now = time.monotonic()
        self._samples.append((now, result.published))
        while len(self._samples) > 2 and now - self._samples[0][0] > self._window_s:
            self._samples.popleft()
        if now - self._last_render >= 0.25:
            self._last_render = now
            self.live.update(self.render(result))

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t_a, n_a), (t_b, n_b) = self._samples[0], self._samples[-1]
        return (n_b - n_a) / (t_b - t_a) if t_b > t_a else 0.0

    def render(self, result: SimulationResult) -> Table:
        elapsed = round(result.elapsed_s)
        sim = "-"
        if result.sim_time is not None:
            sim = f"{result.sim_time.astimezone(ZoneInfo(DEFAULT_TIMEZONE)):%Y-%m-%d %H:%M:%S} KST"
        cells = [
            ("rate", f"{self.rate():.1f} msg/s"),
            ("published", str(result.published)),
            ("malformed", str(result.malformed)),
            ("duplicates", str(result.duplicates)),
            ("elapsed", f"{elapsed // 3600:02d}:{elapsed % 3600 // 60:02d}:{elapsed % 60:02d}"),
            ("in flight", str(result.in_flight)),
            ("failed", str(result.failed)),
            ("simulated", sim),
        ]
        table = Table.grid(padding=(0, 2))
        table.title = self._title
        for _ in range(4):
            table.add_column(no_wrap=True)
        for row in (cells[:4], cells[4:]):
            table.add_row(*(f"[bold]{name}[/bold] {value}" for name, value in row))
        return table


class Via(StrEnum):
    MQTT = "mqtt"
    KAFKA = "kafka"


def _sender(mqtt: MqttSettings, via: Via, gateway: str | None) -> tuple[MqttSettings, str | None]:
    """The MQTT login of the simulated gateway, and the gateway its sensors are assigned to
    (None: any)."""
    if via is not Via.MQTT:
        return mqtt, gateway
    try:
        login = gateway_login(mqtt, gateway)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--gateway") from exc
    return login, login.username


def _parse_start(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO date/time: {value}", param_hint="--start") from exc
    # A naive time is the plant's local time, like the original system's timestamps.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=ZoneInfo(DEFAULT_TIMEZONE))


def simulate_command(
    sensors: Annotated[int, typer.Option(min=1, help="Number of simulated sensors.")] = 40,
    interval: Annotated[
        float, typer.Option(min=0.0001, help="Wall-clock seconds between two readings of a sensor.")
    ] = 5.0,
    via: Annotated[Via, typer.Option(case_sensitive=False, help="Publish through.")] = Via.MQTT,
    seed: Annotated[
        int | None, typer.Option(help="Random seed (default: a new one, logged).")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(min=0.0, help="Stop after this many wall-clock seconds.")
    ] = None,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after sending N messages.")] = None,
    speed: Annotated[
        float, typer.Option(min=0.0001, help="Simulated seconds per wall-clock second.")
    ] = 1.0,
    start: Annotated[
        str | None,
        typer.Option(help="Simulated start, ISO-8601 (naive = KST). Default: see --speed."),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="Readings of one sensor per message.")] = 1,
    heat_wave: Annotated[
        bool, typer.Option("--heat-wave", help="Perceived temperature climbs past 31/33/35 °C.")
    ] = False,
    silent: Annotated[bool, typer.Option("--silent", help="Some sensors stop sending.")] = False,
    stuck: Annotated[bool, typer.Option("--stuck", help="A sensor repeats one value.")] = False,
    spikes: Annotated[bool, typer.Option("--spikes", help="Occasional single spikes.")] = False,
    disorder: Annotated[
        bool, typer.Option("--disorder", help="Late (out-of-order) and duplicate deliveries.")
    ] = False,
    malformed: Annotated[
        bool, typer.Option("--malformed", help="Some payloads are broken.")
    ] = False,
    malformed_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of broken messages with --malformed.")
    ] = 0.05,
    original_format: Annotated[
        bool, typer.Option("--original-format", help="Some readings in the original row format.")
    ] = False,
    original_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of readings in the original format.")
    ] = 0.3,
    pcv_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of sensors sending pcv_temperature.")
    ] = 0.25,
    register: Annotated[
        bool, typer.Option(help="Store and publish the simulated plant's master data first.")
    ] = True,
    record: Annotated[
        Path | None, typer.Option(help="Append one JSON line per published message to FILE.")
    ] = None,
    unpaced: Annotated[
        bool, typer.Option("--unpaced", help="Publish as fast as the broker confirms (load tests).")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a live progress panel on stderr.")] = True,
    gateway: Annotated[
        str | None,
        typer.Option(
            help="Publish over MQTT as this gateway account (password: IOTMON_MQTT__PASSWORD,"
            " or saved by `iotmon gateways add NAME --save`); registered sensors are"
            " assigned to it."
        ),
    ] = None,
) -> None:
    """Simulate factory gateways: realistic readings (and chosen faults) through MQTT or Kafka."""
    settings = settings_or_exit()
    if seed is None:
        seed = int.from_bytes(uuid.uuid4().bytes[:4], "big")
    # Unpaced, a duration says nothing about how much of the schedule gets sent.
    span = expected_span_s(
        sensors, interval, speed, batch=batch, duration_s=None if unpaced else duration, count=count
    )
    begin = _parse_start(start) or default_start(datetime.now(UTC), speed, span, paced=not unpaced)
    scenarios = Scenarios(
        heat_wave=heat_wave,
        silent=silent,
        stuck=stuck,
        spikes=spikes,
        disorder=disorder,
        malformed=malformed,
        original_format=original_format,
        malformed_fraction=malformed_fraction,
        original_fraction=original_fraction,
    )
    try:
        plan = build_plan(
            sensors,
            start=begin,
            interval_s=interval,
            speed=speed,
            seed=seed,
            batch=batch,
            scenarios=scenarios,
            span_s=span,
            pcv_fraction=pcv_fraction,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    on = [
        name
        for name in (
            "heat_wave",
            "silent",
            "stuck",
            "spikes",
            "disorder",
            "malformed",
            "original_format",
        )
        if getattr(scenarios, name)
    ]
    log.info(
        "simulating %d sensors via %s: %.1f msg/s, seed %d, start %s, speed %g, scenarios %s",
        sensors,
        via.value,
        plan.messages_per_second,
        seed,
        iso_z(begin),
        speed,
        ", ".join(on) or "none",
    )
    mqtt_settings, assigned = _sender(settings.mqtt, via, gateway)
    if register:
        try:
            import_master_data(
                settings.db, settings.kafka, master_data(plan.sensors, gateway=assigned)
            )
        except psycopg.Error as exc:
            log.error("master data could not be stored: %s", exc)
            raise typer.Exit(1) from exc
    try:
        publisher: Publisher = (
            MqttPublisher(mqtt_settings)
            if via is Via.MQTT
            else KafkaPublisher(settings.kafka, gateway=gateway)
        )
    except OSError as exc:  # ConnectionError included
        log.error("cannot connect: %s", exc)
        raise typer.Exit(1) from exc
    view = ProgressView(f"iotmon simulate via {via.value}") if progress else None
    with Recorder(record) as recorder:
        if view is not None:
            view.live.start()
        try:
            result = run_simulation(
                plan,
                publisher,
                count=count,
                duration_s=duration,
                paced=not unpaced,
                on_published=recorder,
                on_tick=view,
            )
            if view is not None:
                view.live.update(view.render(result))
        finally:
            if view is not None:
                view.live.stop()
                if not view.live.console.is_terminal:
                    view.live.console.line()
    log.info(
        "done: %d messages published (%d readings, %d malformed, %d duplicates), %d failed, %.1f s",
        result.published,
        result.readings,
        result.malformed,
        result.duplicates,
        result.failed,
        result.elapsed_s,
    )
    if result.failed:
        raise typer.Exit(1)
