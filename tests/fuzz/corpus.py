"""The messages of the fuzz drill, all drawn from one seed.

Each message (:class:`Sent`) knows how it travels (MQTT, or straight into a Kafka topic),
the dead letters it must cause (:class:`Letter`: stage, the reasons allowed, the batch
index) and the good readings it carries (:class:`Truth`).  The same seed gives the same
messages; only the clock moves their times (to the hours before the run) and the times of
the bad timestamps along.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from iotmon.settings import IngestSettings
from schemas.alerts import AlertTransition
from schemas.deadletters import Stage
from schemas.readings import IngressHeaders, Reading, ReadingBatch
from schemas.topics import TOPICS, TopicId
from stream_apps.ingest.validate import MAX_DEPTH
from tests.fuzz.defects import DEFECTS
from tests.fuzz.values import (
    ANCIENT,
    EXTRAS,
    FAR_FUTURE,
    H_EDGES,
    INVALID_TOPIC_IDS,
    INVALID_UTF8,
    NAMES,
    NON_OBJECTS,
    NUMBER_FORMS,
    ROW_NAMES,
    T_EDGES,
    TIME_FORMS,
    TOP_LEVEL_NON_OBJECTS,
    Fields,
    R,
    broken_reasons,
    jtext,
    not_a,
    put,
    render,
    stored_value,
)
from tests.integration.test_output_sinks import aggregate, alert_event, status

BAD_MESSAGES = 4000  # drawn from BAD_KINDS, besides the fixed cases of Corpus.specials
GOOD_SINGLES = 1200
GOOD_BATCHES = 120
DUPLICATES = 120
# Good readings lie in one hour and the first 9 minutes of the next: the data never takes a
# partition's watermark past the first hour's grace (10 minutes), so no good reading is late
# in whatever order the two paths deliver them, and both hours close by the idle clock.
SPAN = timedelta(minutes=69)
# Mosquitto's max_packet_size in the stack's configuration: a bigger PUBLISH is refused.
MQTT_MAX_PACKET = 2 * 1024 * 1024


# -- what a message must cause ------------------------------------------------------------


@dataclass(frozen=True)
class Letter:
    """A dead letter that a message must cause: its stage, the reasons allowed (more than
    one only where either is right), and the item's index in a batch of two or more."""

    stage: Stage
    reasons: frozenset[str]
    index: int | None = None


def at_ingest(*reasons: R, index: int | None = None) -> Letter:
    return Letter(Stage.INGEST, frozenset(reasons), index)


@dataclass(frozen=True)
class Truth:
    """A good reading as the readings table must hold it."""

    sensor_id: str
    capture_dt: datetime
    temperature: Decimal
    humidity: Decimal
    pcv_temperature: Decimal


@dataclass(frozen=True)
class Item:
    """One reading object of a payload: good (``truth``) or bad (``reasons``)."""

    text: bytes
    truth: Truth | None = None
    reasons: frozenset[str] | None = None


@dataclass
class Sent:
    """One message of the drill, how it travels, and what it must cause."""

    kind: str
    route: str  # "mqtt", or the TopicId of the Kafka topic it is written to
    payload: bytes | None
    mqtt_topic: str = ""
    key: bytes | None = None
    partition: int | None = None
    headers: list[tuple[str, bytes]] | None = None
    letters: tuple[Letter, ...] = ()
    good: tuple[Truth, ...] = ()
    at: tuple[str, int, int] | None = None  # (topic, partition, offset) once Kafka has it
    error: str | None = None


def batch_of(items: Sequence[Item]) -> bytes:
    return b"[" + b",".join(i.text for i in items) + b"]"


# Who reads each topic between the stages (and dead-letters what it cannot take).
CONSUMERS: dict[TopicId, tuple[Stage, ...]] = {
    "readings": (Stage.WORKER, Stage.SINK_READINGS),
    "aggregates_hourly": (Stage.SINK_AGGREGATES,),
    "latest": (Stage.SINK_LATEST,),
    "alerts": (Stage.SINK_ALERTS,),
}
SINK_TOPICS: tuple[TopicId, ...] = ("aggregates_hourly", "latest", "alerts")
DOWNSTREAM: tuple[TopicId, ...] = ("readings", *SINK_TOPICS)


# -- the corpus -----------------------------------------------------------------------------


class Corpus:
    """The messages of the drill, all drawn from one seed.

    Capture instants of every reading object (good or not) are unique per sensor to the
    millisecond, so that a bad one stored by mistake shows as an extra row of a known kind,
    and so that the worker (which tells readings apart by milliseconds) and the readings
    table count the same readings."""

    def __init__(
        self,
        seed: int,
        sensors: list[str],
        mqtt_prefix: str,
        start: datetime,
        limits: IngestSettings,
        partitions: int,
    ) -> None:
        self.rng = random.Random(seed)
        self.sensors = sensors
        self.prefix = mqtt_prefix
        self.start = start
        self.now = datetime.now(UTC)
        self.limits = limits
        self.partitions = partitions
        self.messages: list[Sent] = []
        self.owner: dict[tuple[str, datetime], str] = {}  # (sensor, ms instant) -> kind
        self._instants: dict[str, set[datetime]] = defaultdict(set)
        self._fresh: list[tuple[str, datetime]] = []
        self._serial = 0

    # -- building blocks -------------------------------------------------------------------
    def capture(self, sensor: str) -> tuple[str, datetime]:
        """A capture_dt text in one of the accepted forms, and its instant."""
        rng = self.rng
        while True:
            at = self.start + timedelta(
                milliseconds=rng.randrange(SPAN // timedelta(milliseconds=1))
            )
            text, instant = rng.choice(TIME_FORMS)(at, rng)
            ms = instant.replace(microsecond=instant.microsecond // 1000 * 1000)
            if ms not in self._instants[sensor]:
                self._instants[sensor].add(ms)
                self._fresh.append((sensor, ms))
                return text, instant

    def number(self, usual: tuple[int, int], full: tuple[int, int], edges: Sequence[str]) -> str:
        """The JSON text of a good number: within ``usual`` mostly, else anywhere in the
        range ``full``, with up to three decimals, in one of the accepted spellings; now and
        then one of the ``edges``."""
        rng = self.rng
        if rng.random() < 0.06:
            return rng.choice(edges)
        lo, hi = usual if rng.random() < 0.8 else full
        value = Decimal(rng.randint(lo * 1000, hi * 1000)).scaleb(-3)
        return rng.choice(NUMBER_FORMS)(value)

    def fields(self, sensor: str, *, with_id: bool, row: bool = False) -> tuple[Fields, Truth]:
        """A good reading object of ``sensor`` and what it must be stored as."""
        rng = self.rng
        capture, instant = self.capture(sensor)
        t = self.number((15, 38), (-40, 125), T_EDGES)
        h = self.number((30, 90), (0, 100), H_EDGES)
        p = self.number((15, 40), (-40, 125), T_EDGES)
        names = ROW_NAMES if row else NAMES
        fields = [("capture_dt", jtext(capture)), (names[0], t), (names[1], h), (names[2], p)]
        if with_id:
            fields.insert(0, ("sensor_id", jtext(sensor)))
        if rng.random() < 0.15:
            fields.append(rng.choice(EXTRAS))
        if rng.random() < 0.2:
            rng.shuffle(fields)
        truth = Truth(sensor, instant, stored_value(t), stored_value(h), stored_value(p))
        return fields, truth

    def good_item(self, sensor: str, *, with_id: bool) -> Item:
        fields, truth = self.fields(sensor, with_id=with_id, row=self.rng.random() < 0.1)
        return Item(render(fields), truth=truth)

    def bad_item(self, sensor: str, *, keyed: bool, in_batch: bool) -> tuple[str, Item]:
        """A bad reading object and the name of its defect; ``keyed``: the transport names
        ``sensor`` (the MQTT topic, the Kafka key)."""
        rng = self.rng
        if rng.random() < 0.1:
            # Alone, an array would be a batch: only scalars are a payload's non-object.
            shapes = NON_OBJECTS if in_batch else TOP_LEVEL_NON_OBJECTS
            return "not_an_object", Item(
                rng.choice(shapes).encode(), reasons=frozenset({R.NOT_AN_OBJECT})
            )
        fields, _ = self.fields(sensor, with_id=not keyed or rng.random() < 0.7)
        allowed = ("any", "keyed" if keyed else "unkeyed")
        defect = rng.choice([d for d in DEFECTS if d.when in allowed])
        reasons = defect.apply(self, fields, sensor)
        return defect.name, Item(render(fields), reasons=reasons)

    def future_times(self) -> list[str]:
        ahead = self.now + timedelta(hours=self.rng.uniform(1, 24 * 400))
        return [jtext(f"{ahead:%Y-%m-%dT%H:%M:%S}Z"), *FAR_FUTURE]

    def stale_times(self) -> list[str]:
        # An hour past the limit at least, against the clocks of this test and the stage.
        back = self.now - timedelta(days=7, hours=1) - timedelta(days=self.rng.uniform(0, 20000))
        return [jtext(f"{back:%Y-%m-%dT%H:%M:%S}Z"), *ANCIENT]

    def via(self) -> tuple[str, str | None]:
        """A transport and the sensor it names: MQTT (the topic's), Kafka keyed by the
        sensor, or Kafka without a key (None)."""
        sensor = self.rng.choice(self.sensors)
        draw = self.rng.random()
        if draw < 0.5:
            return "mqtt", sensor
        if draw < 0.75:
            return "kafka", sensor
        return "kafka", None

    def add(
        self,
        kind: str,
        transport: str,
        sensor: str | None,
        payload: bytes | None,
        letters: Sequence[Letter] = (),
        good: Sequence[Truth] = (),
        *,
        mqtt_topic: str | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Sent:
        """Record a message to the raw stream (over MQTT, or straight into the raw topic)."""
        if transport == "mqtt":
            topic = mqtt_topic or f"{self.prefix}sensors/{sensor}/readings"
            sent = Sent(kind, "mqtt", payload, mqtt_topic=topic)
        else:
            key = key if key is not None else (sensor.encode() if sensor else None)
            sent = Sent(kind, "readings_raw", payload, key=key, headers=headers)
        sent.letters, sent.good = tuple(letters), tuple(good)
        return self._keep(sent)

    def _keep(self, sent: Sent) -> Sent:
        for instant in self._fresh:
            self.owner[instant] = sent.kind
        self._fresh.clear()
        self.messages.append(sent)
        return sent

    def serial(self) -> int:
        self._serial += 1
        return self._serial

    # -- good input ------------------------------------------------------------------------
    def good_single(self) -> None:
        transport, sensor = self.via()
        item = self.good_item(
            sensor or self.rng.choice(self.sensors),
            with_id=sensor is None or self.rng.random() < 0.7,
        )
        assert item.truth is not None
        self.add("good reading", transport, sensor, item.text, good=[item.truth])

    def good_batch(self) -> None:
        transport, sensor = self.via()
        items = [
            self.good_item(
                sensor or self.rng.choice(self.sensors),
                with_id=sensor is None or self.rng.random() < 0.7,
            )
            for _ in range(self.rng.randint(1, 20))
        ]
        truths = [i.truth for i in items if i.truth is not None]
        self.add("good batch", transport, sensor, batch_of(items), good=truths)

    def duplicate(self) -> None:
        """A good message sent again: stored once, never a dead letter."""
        originals = [m for m in self.messages if m.good and not m.letters]
        original = self.rng.choice(originals)
        copy = Sent(
            "duplicate of a good message",
            original.route,
            original.payload,
            mqtt_topic=original.mqtt_topic,
            key=original.key,
            headers=original.headers,
            good=original.good,
        )
        self.messages.append(copy)

    # -- bad input ---------------------------------------------------------------------------
    def single_bad(self) -> None:
        transport, sensor = self.via()
        owner = sensor or self.rng.choice(self.sensors)
        name, item = self.bad_item(owner, keyed=bool(sensor), in_batch=False)
        assert item.reasons is not None
        letter = Letter(Stage.INGEST, item.reasons)
        self.add(f"bad item: {name}", transport, sensor, item.text, [letter])

    def bad_batch(self, size: int = 0, kind: str = "batch with bad items") -> None:
        """A batch (of ``size`` items, else 2 to 30) with 1 to 5 bad ones among good ones:
        a dead letter for each bad one, with its index; the good ones are stored."""
        rng = self.rng
        transport, sensor = self.via()
        size = size or rng.randint(2, 30)
        bad = set(rng.sample(range(size), rng.randint(1, min(5, size))))
        items: list[Item] = []
        for n in range(size):
            owner = sensor or rng.choice(self.sensors)
            if n in bad:
                items.append(self.bad_item(owner, keyed=bool(sensor), in_batch=True)[1])
            else:
                items.append(self.good_item(owner, with_id=sensor is None or rng.random() < 0.7))
        letters = [
            Letter(Stage.INGEST, i.reasons, n) for n, i in enumerate(items) if i.reasons is not None
        ]
        truths = [i.truth for i in items if i.truth is not None]
        self.add(kind, transport, sensor, batch_of(items), letters, truths)

    def top_level_non_object(self) -> None:
        transport, sensor = self.via()
        payload = self.rng.choice(TOP_LEVEL_NON_OBJECTS).encode()
        self.add("not an object", transport, sensor, payload, [at_ingest(R.NOT_AN_OBJECT)])

    def _broken(self, kind: str, make: Callable[[], bytes]) -> None:
        """A payload that is no JSON document, as ``make`` draws it (drawn again while the
        draw happens to be JSON)."""
        while True:
            payload = make()
            reasons = broken_reasons(payload)
            if reasons is not None:
                break
        transport, sensor = self.via()
        self.add(kind, transport, sensor, payload, [Letter(Stage.INGEST, reasons)])

    def some_good_payload(self) -> bytes:
        sensor = self.rng.choice(self.sensors)
        if self.rng.random() < 0.3:
            return batch_of([self.good_item(sensor, with_id=True) for _ in range(3)])
        return self.good_item(sensor, with_id=True).text

    def random_bytes(self) -> None:
        self._broken("random bytes", lambda: self.rng.randbytes(self.rng.randint(1, 300)))

    def random_text(self) -> None:
        alphabet = '{}[]":,0123456789.-+eE truefalsnul\\\t\nx°온'

        def draw() -> bytes:
            n = self.rng.randint(1, 120)
            return "".join(self.rng.choice(alphabet) for _ in range(n)).encode()

        self._broken("random JSON-like text", draw)

    def mutated(self) -> None:
        """A good payload with bytes flipped, deleted, inserted or repeated."""
        rng = self.rng

        def draw() -> bytes:
            data = bytearray(self.some_good_payload())
            for _ in range(rng.randint(1, 4)):
                pos = rng.randrange(len(data))
                edit = rng.randrange(4)
                if edit == 0:
                    data[pos] ^= rng.randint(1, 255)
                elif edit == 1:
                    del data[pos]
                elif edit == 2:
                    data.insert(pos, rng.randrange(256))
                else:
                    data[pos:pos] = data[pos : pos + rng.randint(1, 8)]
            return bytes(data)

        self._broken("corrupted JSON", draw)

    def truncated(self) -> None:
        def draw() -> bytes:
            data = self.some_good_payload()
            return data[: self.rng.randrange(len(data))]

        self._broken("truncated JSON", draw)

    def not_utf8(self) -> None:
        def draw() -> bytes:
            data = self.some_good_payload()
            if self.rng.random() < 0.2:
                return data.decode().encode("utf-16")
            pos = self.rng.randrange(len(data))
            return data[:pos] + self.rng.choice(INVALID_UTF8) + data[pos:]

        self._broken("not UTF-8", draw)

    def odd_json(self) -> None:
        """Text that parsers read differently (some take a byte order mark, a lone surrogate
        escape or a raw control character): malformed_json, as docs/wire-format.md says."""
        transport, sensor = self.via()
        fields, _ = self.fields(sensor or self.rng.choice(self.sensors), with_id=sensor is None)
        body = render(fields)
        payload = self.rng.choice(
            [
                b"\xef\xbb\xbf" + body,
                body[:-1] + b',"odd":"\\ud800"}',
                body[:-1] + b',"odd":"x\\udfff"}',
                body[:-1] + b',"\\udbff":1}',
                body[:-1] + b',"odd":"a\x01b"}',
                body[:-1] + b',"odd":"a\x00b"}',
                b" \n\t ",
            ]
        )
        self.add("odd JSON text", transport, sensor, payload, [at_ingest(R.MALFORMED_JSON)])

    def empty(self) -> None:
        transport, sensor = self.via()
        payload: bytes | None = self.rng.choice([b"", b"[]"])
        if transport == "kafka" and self.rng.random() < 0.3:
            payload = None  # a record without a value
        self.add("empty", transport, sensor, payload, [at_ingest(R.EMPTY_PAYLOAD)])

    def too_deep(self) -> None:
        rng = self.rng
        transport, sensor = self.via()
        depth = rng.randint(MAX_DEPTH + 1, 3000)
        fields, _ = self.fields(sensor or rng.choice(self.sensors), with_id=sensor is None)
        shape = rng.randrange(3)
        if shape == 0:
            payload = b"[" * depth + b"]" * depth
        elif shape == 1:  # the object itself is one level: its field goes past the limit
            payload = render([*fields, ("deep", "[" * MAX_DEPTH + "]" * MAX_DEPTH)])
        else:
            payload = render([*fields, ("deep", '{"a":' * depth + "1" + "}" * depth)])
        self.add("too deep", transport, sensor, payload, [at_ingest(R.TOO_DEEP)])

    def duplicate_key(self) -> None:
        rng = self.rng
        transport, sensor = self.via()
        owner = sensor or rng.choice(self.sensors)
        fields, _ = self.fields(owner, with_id=True)
        body = render(fields)
        key = rng.choice([k for k, _ in fields])
        shape = rng.randrange(4)
        if shape == 0:
            payload = body[:-1] + f",{jtext(key)}:{dict(fields)[key]}}}".encode()
        elif shape == 1:  # the same key, one spelling escaped
            payload = body[:-1] + b',"temp\\u0065rature":20.5}'
        elif shape == 2:
            payload = body[:-1] + b',"meta":{"a":1,"b":[{"c":1,"c":1}]}}'
        else:  # in one item of a batch: the whole payload is refused, once
            items = [self.good_item(owner, with_id=True) for _ in range(rng.randint(1, 5))]
            payload = batch_of([*items, Item(body[:-1] + b',"sensor_id":"TEMPIOT-A011"}')])
        self.add("duplicate key", transport, sensor, payload, [at_ingest(R.DUPLICATE_KEY)])

    def unknown_sensor(self) -> None:
        """A reading of an unregistered sensor, the topic or key naming it too."""
        unknown = f"TEMPIOT-Y{self.rng.randint(100, 999)}"
        transport = self.rng.choice(["mqtt", "kafka"])
        fields, _ = self.fields(unknown, with_id=self.rng.random() < 0.5)
        self.add(
            "unknown sensor", transport, unknown, render(fields), [at_ingest(R.UNKNOWN_SENSOR)]
        )

    def wrong_topic(self) -> None:
        sensor = self.rng.choice(self.sensors)
        suffix = self.rng.choice(
            [
                f"sensors/{sensor}/status",
                f"sensors/{sensor}",
                f"sensors/{sensor}/readings/extra",
                f"sensors/{sensor}/readings/",
                f"sensors/{sensor}/READINGS",
                "sensors//readings",
                "sensors/",
                "sensors",
            ]
        )
        payload = self.some_good_payload() if self.rng.random() < 0.5 else self.rng.randbytes(20)
        self.add(
            "wrong MQTT topic",
            "mqtt",
            sensor,
            payload,
            [Letter(Stage.BRIDGE, frozenset({R.WRONG_TOPIC}))],
            mqtt_topic=self.prefix + suffix,
        )

    def invalid_topic_sensor(self) -> None:
        """A reading topic whose sensor level is no valid sensor id."""
        named = self.rng.choice(INVALID_TOPIC_IDS)
        sensor = self.rng.choice(self.sensors)
        fields, _ = self.fields(sensor, with_id=False)
        draw = self.rng.randrange(3)
        reason = R.WRONG_TYPE
        if draw == 1:
            put(fields, "sensor_id", jtext(named))
        elif draw == 2:  # the payload names a registered sensor: not the topic's
            put(fields, "sensor_id", jtext(sensor))
            reason = R.SENSOR_MISMATCH
        self.add(
            "sensor id in the topic invalid", "mqtt", named, render(fields), [at_ingest(reason)]
        )

    # -- garbage between the stages ----------------------------------------------------------
    def downstream(self, topic: TopicId) -> None:
        """A record in a topic between the stages that its consumers cannot take."""
        model = TOPICS[topic].model
        sample = self._sample(topic)
        rng = self.rng
        while True:
            shape = rng.randrange(4)
            if shape == 0:
                payload = rng.randbytes(rng.randint(1, 200))
            elif shape == 1:
                flipped = bytearray(sample)
                for _ in range(rng.randint(1, 4)):
                    flipped[rng.randrange(len(flipped))] ^= rng.randint(1, 255)
                payload = bytes(flipped)
            elif shape == 2:
                payload = rng.choice([b"[]", b"null", b"42", b'"x"', b'{"readings": "x"}', b"{"])
            else:
                payload = sample[: rng.randrange(len(sample))]
            if not_a(model, payload):
                break
        self._downstream(f"garbage in {topic}", topic, payload)

    def _sample(self, topic: TopicId) -> bytes:
        n = self.serial()
        if topic == "readings":
            at = self.start + timedelta(minutes=30)
            reading = Reading(
                sensor_id=f"FUZZ-R{n:05d}",
                loc_id="R001",
                capture_dt=at,
                temperature=Decimal("25.5"),
                humidity=Decimal("50.0"),
                pcv_temperature=None,
                source="kafka",
                received_at=at,
            )
            return ReadingBatch(readings=[reading]).model_dump_json().encode()
        if topic == "aggregates_hourly":
            return aggregate(f"FUZZ-A{n:05d}", 0, count=1).model_dump_json().encode()
        if topic == "latest":
            return status(f"FUZZ-L{n:05d}", 1, "25.0").model_dump_json().encode()
        event = alert_event(uuid.UUID(int=self.rng.getrandbits(128)), AlertTransition.RAISED, 1)
        return event.model_copy(update={"sensor_id": f"FUZZ-E{n:05d}"}).model_dump_json().encode()

    def refused_by_database(self, topic: TopicId) -> None:
        """A record that decodes, with a value the database refuses (a NUL in a text
        column, a number beyond its column)."""
        sample = json.loads(self._sample(topic))
        if topic == "alerts":
            sample["measured_value"] = "123456789.5"
        else:
            sample["loc_id"] = "A\u0000001"
        self._downstream(f"{topic} refused by the database", topic, json.dumps(sample).encode())

    def tombstone(self, topic: TopicId) -> None:
        # In the compacted latest topic a record without a value deletes: nothing to store.
        self._downstream(f"no value in {topic}", topic, None, () if topic == "latest" else None)

    def no_op_batch(self) -> None:
        """Valid, empty reading batches: nothing to do, nothing dead-lettered."""
        payload = self.rng.choice([b"{}", b'{"readings":[]}', b'{"readings":[],"tick_at":null}'])
        self._downstream("empty reading batch", "readings", payload, ())

    def _downstream(
        self,
        kind: str,
        topic: TopicId,
        payload: bytes | None,
        letters: Sequence[Letter] | None = None,
    ) -> None:
        """Record a message to ``topic``; by default each consumer of it dead-letters it."""
        if letters is None:
            letters = [Letter(stage, frozenset({R.INTERNAL_ERROR})) for stage in CONSUMERS[topic]]
        # Keyed: a compacted topic takes no record without a key.
        key = f"FUZZ-K{self.serial():05d}".encode()
        sent = Sent(kind, topic, payload, key=key, partition=self.rng.randrange(self.partitions))
        sent.letters = tuple(letters)
        self._keep(sent)

    # -- the fixed cases at the limits -------------------------------------------------------
    def padded(self, kind: str, transport: str, size: int, letters: Sequence[Letter]) -> None:
        """A reading padded with spaces to ``size`` bytes; good if ``letters`` is empty."""
        sensor = self.rng.choice(self.sensors)
        fields, truth = self.fields(sensor, with_id=True)
        body = render(fields)
        payload = body + b" " * (size - len(body))
        self.add(kind, transport, sensor, payload, letters, [] if letters else [truth])

    def specials(self) -> None:
        limit, items = self.limits.max_payload_bytes, self.limits.max_batch_items
        self.padded("good: exactly the payload limit", "kafka", limit, [])
        self.padded("good: exactly the payload limit", "mqtt", limit, [])
        for transport in ("mqtt", "kafka"):
            self.padded(
                "one byte over the payload limit", transport, limit + 1, [at_ingest(R.TOO_LARGE)]
            )
            self.padded("1.5 MiB payload", transport, limit * 3 // 2, [at_ingest(R.TOO_LARGE)])
        # More than a Kafka record may carry, yet small enough for Mosquitto to take.
        bridge_too_large = Letter(Stage.BRIDGE, frozenset({R.TOO_LARGE}))
        for _ in range(2):
            self.padded(
                "over the raw topic's record limit",
                "mqtt",
                MQTT_MAX_PACKET - 256,
                [bridge_too_large],
            )
        self.bad_batch(items, "batch of the item limit with bad items")
        for _ in range(4):
            self.too_long_batch(items + self.rng.randint(1, 300))
        for _ in range(2):
            self.wide()
            self.deepest_good()
        deep = b"[" * 100_000
        self.add(
            "100,000 open brackets", "kafka", None, deep, [at_ingest(R.TOO_DEEP, R.MALFORMED_JSON)]
        )
        for _ in range(20):
            self.odd_headers()
        for _ in range(10):
            self.undecodable_key()
        for _ in range(2):
            self.long_sensor_names()

    def too_long_batch(self, size: int) -> None:
        owner = self.rng.choice(self.sensors)
        items = [
            self.good_item(owner, with_id=True) if self.rng.random() < 0.5 else Item(b"{}")
            for _ in range(size)
        ]
        transport = self.rng.choice(["mqtt", "kafka"])
        letters = [at_ingest(R.BATCH_TOO_LONG)]
        self.add("batch over the item limit", transport, owner, batch_of(items), letters)

    def wide(self) -> None:
        """A good reading with thousands of ignored fields."""
        sensor = self.rng.choice(self.sensors)
        fields, truth = self.fields(sensor, with_id=True)
        fields += [(f"x{n}", str(n)) for n in range(5000)]
        self.add("good: 5,000 extra fields", "kafka", sensor, render(fields), good=[truth])

    def deepest_good(self) -> None:
        """A good reading nested exactly as deep as allowed (its object is the first level)."""
        sensor = self.rng.choice(self.sensors)
        fields, truth = self.fields(sensor, with_id=True)
        deep = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
        transport = self.rng.choice(["mqtt", "kafka"])
        self.add(
            "good: nested to the limit",
            transport,
            sensor,
            render([*fields, ("deep", deep)]),
            good=[truth],
        )

    def odd_headers(self) -> None:
        """A good reading straight to Kafka with headers no gateway should send."""
        sensor = self.rng.choice(self.sensors)
        item = self.good_item(sensor, with_id=True)
        assert item.truth is not None
        received = self.rng.choice(
            [
                self.rng.randbytes(8),
                b"9999-12-31T23:59:59-14:00",
                b"0001-01-01T00:00:00+14:00",
                b"not a time",
                b"2025-01-01T00:00:00",
                b"",
            ]
        )
        headers = [
            (IngressHeaders.RECEIVED_AT, received),
            (IngressHeaders.SOURCE, self.rng.choice([b"mqtt", b"\xff\xfe", b""])),
            (IngressHeaders.GATEWAY, b"\x00" * 5),
            (f"x-{self.rng.randint(0, 99)}", self.rng.randbytes(16)),
        ]
        self.add(
            "good: odd headers", "kafka", sensor, item.text, good=[item.truth], headers=headers
        )

    def undecodable_key(self) -> None:
        """A good reading keyed by bytes that are no sensor id: the payload's id counts."""
        sensor = self.rng.choice(self.sensors)
        item = self.good_item(sensor, with_id=True)
        assert item.truth is not None
        key = self.rng.choice([b"\xff\xfe\xfd", b"\xc0"])
        self.add("good: key not UTF-8", "kafka", None, item.text, good=[item.truth], key=key)

    def long_sensor_names(self) -> None:
        """A Kafka key and an MQTT topic level of tens of thousands of characters (the
        dead letter keeps the first KiB of such a key)."""
        sensor = self.rng.choice(self.sensors)
        fields, _ = self.fields(sensor, with_id=True)
        letter = at_ingest(R.SENSOR_MISMATCH)
        self.add("very long Kafka key", "kafka", "K" * 20_000, render(fields), [letter])
        fields, _ = self.fields(sensor, with_id=False)
        letter = at_ingest(R.WRONG_TYPE)  # the topic's id stands in for the payload's
        self.add("very long topic level", "mqtt", "T" * 60_000, render(fields), [letter])

    def build(self) -> list[Sent]:
        """Every message of the drill, shuffled into one stream."""
        for _ in range(GOOD_SINGLES):
            self.good_single()
        for _ in range(GOOD_BATCHES):
            self.good_batch()
        self.specials()
        kinds = [k for k, _ in BAD_KINDS]
        weights = [w for _, w in BAD_KINDS]
        for make in self.rng.choices(kinds, weights, k=BAD_MESSAGES):
            make(self)
        for _ in range(DUPLICATES):
            self.duplicate()
        self.rng.shuffle(self.messages)
        return self.messages


BAD_KINDS: list[tuple[Callable[[Corpus], None], float]] = [
    (Corpus.single_bad, 30),
    (Corpus.bad_batch, 10),
    (Corpus.top_level_non_object, 2),
    (Corpus.random_bytes, 6),
    (Corpus.random_text, 4),
    (Corpus.mutated, 10),
    (Corpus.truncated, 4),
    (Corpus.not_utf8, 3),
    (Corpus.odd_json, 2),
    (Corpus.empty, 2),
    (Corpus.too_deep, 2),
    (Corpus.duplicate_key, 3),
    (Corpus.unknown_sensor, 3),
    (Corpus.wrong_topic, 3),
    (Corpus.invalid_topic_sensor, 2),
    (lambda c: c.downstream("readings"), 3),
    (lambda c: c.downstream("aggregates_hourly"), 1.5),
    (lambda c: c.downstream("latest"), 1.5),
    (lambda c: c.downstream("alerts"), 1.5),
    (lambda c: c.refused_by_database(c.rng.choice(SINK_TOPICS)), 1),
    (lambda c: c.tombstone(c.rng.choice(DOWNSTREAM)), 0.5),
    (Corpus.no_op_batch, 0.5),
]
