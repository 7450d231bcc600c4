"""``iotmon dlq`` on the real Kafka and PostgreSQL: dead letters counted, listed, shown, and
replayed once into the pipeline after the cause was fixed."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from iotmon.cli import app
from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.deadletters import (
    Selection,
    count_dead_letters,
    get_dead_letter,
    list_dead_letters,
    render_payload,
)
from producers.kafka import make_producer
from producers.masterdata import MasterData, import_master_data
from producers.replay import replay_dead_letters, replayed_from
from schemas.deadletters import (
    MAX_PAYLOAD_BYTES,
    DeadLetterHeaders,
    DeadLetterReason,
    DeadLetterRecord,
    Stage,
    dead_letter,
)
from schemas.master import Location, Sensor
from schemas.readings import IngressHeaders
from schemas.topics import topic_name
from stream_apps.ingest.main import build as build_ingest
from stream_apps.sinks.main import build as build_sink
from stream_apps.sinks.runner import SinkMetrics
from tests.helpers import headers_of, value_of, wait_for

pytestmark = pytest.mark.integration

SENSOR = "TEMPIOT-D0042"


class Running:
    """A stage (ingest or the readings sink) running in a thread of the test."""

    def __init__(self, settings: Settings, kind: str) -> None:
        self.registry = CollectorRegistry()
        self.stage: Any
        if kind == "ingest":
            self.stage = build_ingest(settings, self.registry)
        else:
            self.stage = build_sink(settings, "readings", SinkMetrics(self.registry))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.stage.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels or None) or 0.0

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.stage.consumer.close()
        directory = getattr(self.stage, "directory", None)
        if directory is not None:
            directory.close()


@pytest.fixture
def settings(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, group_id: str
) -> Settings:
    return stack.model_copy(
        update={
            "kafka": kafka,
            "db": db,
            "ingest": stack.ingest.model_copy(update={"group_id": f"{group_id}-ingest"}),
            "sink": stack.sink.model_copy(update={"group_prefix": group_id}),
        }
    )


@pytest.fixture
def ingest(settings: Settings) -> Iterator[Running]:
    # Another sensor of the plant: the sensors topic is written (and has its leader) before
    # the ingest stage reads it.
    import_master_data(settings.db, settings.kafka, plant("TEMPIOT-D0001"))
    running = Running(settings, "ingest")
    yield running
    running.close()


@pytest.fixture
def sink(settings: Settings) -> Iterator[Running]:
    running = Running(settings, "sink")
    yield running
    running.close()


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, kafka: KafkaSettings, db: DatabaseSettings) -> None:
    """The environment a deployment sets for `iotmon`: this test's topics and schema."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("IOTMON_DATABASE_URL", raising=False)
    monkeypatch.setenv("IOTMON_KAFKA__BOOTSTRAP_SERVERS", kafka.bootstrap_servers)
    monkeypatch.setenv("IOTMON_KAFKA__TOPIC_PREFIX", kafka.topic_prefix)
    monkeypatch.setenv("IOTMON_DB__URL", db.url)
    monkeypatch.setenv("IOTMON_DB__DB_SCHEMA", db.db_schema)


def plant(sensor_id: str) -> MasterData:
    loc_id = sensor_id[-4:]
    return MasterData(
        [Location(loc_id=loc_id, factory="SinPyeong")], [Sensor(sensor_id=sensor_id, loc_id=loc_id)]
    )


def iotmon(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def stored(db: DatabaseSettings) -> list[tuple[object, ...]]:
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        return conn.execute(
            "SELECT sensor_id, capture_dt, source, received_at FROM readings"
        ).fetchall()


def replays(db: DatabaseSettings) -> list[tuple[object, ...]]:
    with psycopg.connect(db.url) as conn:
        conn.execute(f'SET search_path TO "{db.db_schema}"')
        return conn.execute(
            "SELECT dlq_offset, reason, sensor_id, replays FROM dead_letter_replays"
            " ORDER BY dlq_offset"
        ).fetchall()


def replayed_copies(kafka: KafkaSettings) -> list[Message]:
    """Records of the raw topic that carry a dlq.replayed.from header.  A replay returns once
    Kafka confirmed its copies, so reading to the current end finds every one."""
    topic = topic_name("readings_raw", kafka.topic_prefix)
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"copies-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        got: list[Message] = []
        deadline = time.monotonic() + 30
        while sum(ends.values()) > len(got) and time.monotonic() < deadline:
            got.extend(m for m in consumer.consume(1000, 0.3) if m.error() is None)
    finally:
        consumer.close()
    return [m for m in got if DeadLetterHeaders.REPLAYED_FROM in headers_of(m)]


def test_unknown_sensor_replayed_once_after_registration(
    ingest: Running,
    sink: Running,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    cli_env: None,
) -> None:
    captured = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    received = captured + timedelta(seconds=2)
    doc = {
        "sensor_id": SENSOR,
        "capture_dt": captured.isoformat(),
        "temperature": 21.5,
        "humidity": 40.0,
    }
    producer = make_producer(kafka)
    producer.produce(
        topic_name("readings_raw", kafka.topic_prefix),
        orjson.dumps(doc),
        key=SENSOR.encode(),
        headers=[
            (IngressHeaders.MQTT_TOPIC, f"sensors/{SENSOR}/readings".encode()),
            (IngressHeaders.RECEIVED_AT, received.isoformat().encode()),
            (IngressHeaders.GATEWAY, b"gw-7"),
            (IngressHeaders.SOURCE, b"mqtt"),
        ],
    )
    assert producer.flush(10) == 0

    # 1. rejected: the sensor is not registered
    unknown = Selection(reasons=frozenset({DeadLetterReason.UNKNOWN_SENSOR.value}))
    wait_for(
        lambda: list_dead_letters(kafka, unknown).matched == 1, what="the unknown_sensor letter"
    )
    (letter,) = list_dead_letters(kafka, unknown).letters
    assert letter.key == SENSOR
    assert orjson.loads(letter.payload) == doc

    # 2. the operator registers the sensor; the running ingest stage sees it
    import_master_data(db, kafka, plant(SENSOR))
    wait_for(lambda: ingest.stage.directory.get(SENSOR) is not None, what="the registration")

    # 3. replayed: accepted by ingest, stored once by the sink
    report = replay_dead_letters(kafka, db, unknown)
    assert [(o.offset, o.sensor) for o in report.replayed] == [(letter.offset, SENSOR)]
    assert not report.already and not report.skipped and not report.failed
    (copy,) = replayed_copies(kafka)
    assert copy.key() == SENSOR.encode()
    assert orjson.loads(value_of(copy)) == doc
    headers = headers_of(copy)
    assert headers[DeadLetterHeaders.REPLAYED_FROM] == f"0:{letter.offset}".encode()
    assert headers[IngressHeaders.MQTT_TOPIC] == f"sensors/{SENSOR}/readings".encode()
    assert headers[IngressHeaders.GATEWAY] == b"gw-7"
    assert headers[IngressHeaders.SOURCE] == b"mqtt"
    wait_for(lambda: len(stored(db)) == 1, what="the replayed reading in the database")
    assert stored(db) == [(SENSOR, captured, "mqtt", received)]
    assert replays(db) == [(letter.offset, "unknown_sensor", SENSOR, 1)]

    # 4. a second run, through the command: nothing re-published
    output = iotmon("dlq", "replay", "--reason", "unknown_sensor")
    assert "0 re-published, 1 already replayed" in output
    assert len(replayed_copies(kafka)) == 1
    assert replays(db) == [(letter.offset, "unknown_sensor", SENSOR, 1)]

    # ... and with --force re-published, still stored once
    output = iotmon("dlq", "replay", "--reason", "unknown_sensor", "--force")
    assert "1 re-published, 0 already replayed" in output
    assert len(replayed_copies(kafka)) == 2
    wait_for(
        lambda: ingest.metric("iotmon_ingest_accepted_total", source="mqtt") == 2,
        what="ingest accepting the second copy",
    )
    wait_for(
        lambda: sink.metric("iotmon_sink_records_total", sink="readings") == 2,
        what="the sink writing the second copy",
    )
    assert stored(db) == [(SENSOR, captured, "mqtt", received)]
    assert replays(db) == [(letter.offset, "unknown_sensor", SENSOR, 2)]
    # the accepted copies left no new dead letter
    assert list_dead_letters(kafka, unknown).matched == 1


def _legacy_ingest_letter(kafka: KafkaSettings) -> DeadLetterRecord:
    """A dead letter as the ingest stage wrote them before every stage used dead_letter()."""
    return DeadLetterRecord(
        b"TEMPIOT-D0003",
        b'{"sensor_id": "TEMPIOT-D0003", "capture_dt": "2024-01-01T00:00:00Z"}',
        [
            (DeadLetterHeaders.REASON, b"unknown_sensor"),
            (DeadLetterHeaders.DETAIL, b"sensor TEMPIOT-D0003 is not registered"),
            (DeadLetterHeaders.SOURCE, b"mqtt"),
            (
                DeadLetterHeaders.ORIGIN_TOPIC,
                topic_name("readings_raw", kafka.topic_prefix).encode(),
            ),
            (DeadLetterHeaders.ORIGIN_PARTITION, b"2"),
            (DeadLetterHeaders.ORIGIN_OFFSET, b"17"),
            (IngressHeaders.RECEIVED_AT, b"2024-01-01T00:00:01+00:00"),
        ],
    )


def produce_letters(kafka: KafkaSettings) -> dict[str, int]:
    """A few dead letters of different reasons and stages; returns their offsets by name."""
    raw_topic = topic_name("readings_raw", kafka.topic_prefix)
    passthrough = [
        (IngressHeaders.MQTT_TOPIC, b"sensors/TEMPIOT-D0001/readings"),
        (IngressHeaders.RECEIVED_AT, b"2024-01-01T00:00:00+00:00"),
        (IngressHeaders.SOURCE, b"mqtt"),
    ]
    letters = {
        "malformed": dead_letter(
            reason=DeadLetterReason.MALFORMED_JSON,
            detail="expected a value at line 1 column 15\n\x1b[31mred\x1b[0m",
            stage=Stage.INGEST,
            payload=b'{"sensor_id": ',
            key=b"TEMPIOT-D0001",
            origin_topic=raw_topic,
            origin_partition=0,
            origin_offset=5,
            passthrough=passthrough,
        ),
        "batch_item": dead_letter(
            reason=DeadLetterReason.OUT_OF_RANGE,
            detail="temperature 300 is above 125",
            stage=Stage.INGEST,
            payload=b'{"sensor_id":"TEMPIOT-D0002","temperature":300}',
            key=b"TEMPIOT-D0002",
            origin_topic=raw_topic,
            index=2,
        ),
        "worker": dead_letter(
            reason=DeadLetterReason.INTERNAL_ERROR,
            detail="could not apply the reading",
            stage=Stage.WORKER,
            payload=b'{"readings": []}',
            key=b"TEMPIOT-D0002",
            error=ValueError("x"),
        ),
        "truncated": dead_letter(
            reason=DeadLetterReason.TOO_LARGE,
            detail="too large",
            stage=Stage.INGEST,
            payload=b"[" + b" " * (MAX_PAYLOAD_BYTES + 100) + b"]",
            key=b"TEMPIOT-D0001",
            origin_topic=raw_topic,
        ),
        "binary": dead_letter(
            reason=DeadLetterReason.INVALID_UTF8,
            detail="not UTF-8",
            stage=Stage.BRIDGE,
            payload=b"\xff\xfe\x1b[2J\x00binary",
        ),
        "legacy": _legacy_ingest_letter(kafka),
    }
    producer = make_producer(kafka)
    offsets: dict[str, int] = {}

    def delivered(name: str):
        def report(err: object, msg: Message) -> None:
            assert err is None, err
            offsets[name] = msg.offset() or 0

        return report

    for name, record in letters.items():
        producer.produce(
            topic_name("dead_letters", kafka.topic_prefix),
            record.value,
            key=record.key,
            headers=record.headers,  # type: ignore[arg-type]
            on_delivery=delivered(name),
        )
        producer.flush(10)  # one at a time: offsets in this order
    assert len(offsets) == len(letters)
    return offsets


def test_count_list_show_and_what_replay_refuses(
    kafka: KafkaSettings, db: DatabaseSettings, cli_env: None
) -> None:
    offsets = produce_letters(kafka)

    rows = {(r.reason, r.stage): r.count for r in count_dead_letters(kafka)}
    assert rows == {
        ("malformed_json", "ingest"): 1,
        ("out_of_range", "ingest"): 1,
        ("internal_error", "worker"): 1,
        ("too_large", "ingest"): 1,
        ("invalid_utf8", "bridge"): 1,
        ("unknown_sensor", "ingest"): 1,  # no dlq.stage: the ingest stage, by its origin
    }
    ingest_only = count_dead_letters(kafka, Selection(stages=frozenset({"ingest"})))
    assert sum(r.count for r in ingest_only) == 4
    output = iotmon("dlq", "count", "--stage", "ingest")
    assert "total" in output and "4" in output

    listing = list_dead_letters(kafka, limit=2)
    assert listing.matched == 6
    assert [x.offset for x in listing.letters] == [offsets["binary"], offsets["legacy"]]
    by_sensor = list_dead_letters(kafka, Selection(sensors=frozenset({"TEMPIOT-D0002"})))
    assert [x.offset for x in by_sensor.letters] == [offsets["batch_item"], offsets["worker"]]
    assert by_sensor.letters[0].index == 2
    future = Selection(since=datetime.now(UTC) + timedelta(hours=1))
    assert list_dead_letters(kafka, future).matched == 0
    recent = Selection(since=datetime.now(UTC) - timedelta(hours=1))
    assert list_dead_letters(kafka, recent).matched == 6
    lines = iotmon("dlq", "list", "--json", "--reason", "too_large").splitlines()
    (summary,) = [orjson.loads(line) for line in lines]
    assert summary["offset"] == offsets["truncated"]
    assert summary["size"] == MAX_PAYLOAD_BYTES + 102
    assert summary["truncated"] is True
    table = iotmon("dlq", "list", "--last", "1h")
    assert "\x1b" not in table  # the detail's escape sequence is shown escaped
    assert "6 of 6" in table

    truncated = get_dead_letter(kafka, offsets["truncated"])
    assert truncated.truncated and len(truncated.payload) == MAX_PAYLOAD_BYTES
    binary = get_dead_letter(kafka, offsets["binary"])
    assert binary.payload == b"\xff\xfe\x1b[2J\x00binary"
    assert render_payload(binary.payload).kind == "hex"
    with pytest.raises(LookupError):
        get_dead_letter(kafka, 10_000)
    shown = iotmon("dlq", "show", str(offsets["malformed"]))
    assert "dlq.reason: malformed_json" in shown
    assert "mqtt.topic: sensors/TEMPIOT-D0001/readings" in shown
    assert '{"sensor_id": ' in shown
    assert "\x1b" not in shown
    shown = iotmon("dlq", "show", str(offsets["binary"]))
    assert "payload (hex)" in shown and "ff fe 1b 5b" in shown
    assert "\x1b" not in shown and "\x00" not in shown

    everything = Selection(since=datetime.now(UTC) - timedelta(hours=1))
    dry = replay_dead_letters(kafka, db, everything, dry_run=True)
    assert not replays(db)
    report = replay_dead_letters(kafka, db, everything)
    assert {o.offset for o in dry.replayed} == {o.offset for o in report.replayed}
    assert {o.offset for o in report.replayed} == {
        offsets["malformed"],
        offsets["batch_item"],
        offsets["binary"],
        offsets["legacy"],
    }
    skipped = {o.offset: o.note for o in report.skipped}
    assert skipped.keys() == {offsets["worker"], offsets["truncated"]}
    assert "stage worker" in skipped[offsets["worker"]]
    assert "cut" in skipped[offsets["truncated"]]

    copies = {
        headers_of(m)[DeadLetterHeaders.REPLAYED_FROM].decode(): m for m in replayed_copies(kafka)
    }
    assert set(copies) == {f"0:{o.offset}" for o in report.replayed}
    item = copies[f"0:{offsets['batch_item']}"]
    assert item.key() == b"TEMPIOT-D0002"
    assert orjson.loads(value_of(item)) == {"sensor_id": "TEMPIOT-D0002", "temperature": 300}
    malformed = headers_of(copies[f"0:{offsets['malformed']}"])
    assert malformed[IngressHeaders.MQTT_TOPIC] == b"sensors/TEMPIOT-D0001/readings"
    assert malformed[IngressHeaders.SOURCE] == b"mqtt"
    assert not any(name.startswith("dlq.") and name != "dlq.replayed.from" for name in malformed)
    legacy = headers_of(copies[f"0:{offsets['legacy']}"])
    assert legacy[IngressHeaders.SOURCE] == b"mqtt"  # from dlq.source
    assert legacy[IngressHeaders.RECEIVED_AT] == b"2024-01-01T00:00:01+00:00"

    again = replay_dead_letters(kafka, db, everything)
    assert not again.replayed and not again.failed
    assert {o.offset for o in again.already} == set(skipped.keys()) ^ set(offsets.values())
    assert {o.offset for o in again.skipped} == set(skipped)
    assert len(replayed_copies(kafka)) == 4

    by_offset = iotmon("dlq", "replay", "--offset", str(offsets["worker"]), "--dry-run")
    assert "0 to re-publish" in by_offset and "1 skipped" in by_offset
    assert "stage worker" in by_offset
    refused = CliRunner().invoke(app, ["dlq", "replay"])
    assert refused.exit_code == 2


def produce_raw(kafka: KafkaSettings, records: list[DeadLetterRecord], **kwargs: Any) -> list[int]:
    """Write ``records`` to the dead-letter topic one by one; their offsets, in order."""
    producer = make_producer(kafka)
    offsets: list[int] = []

    def report(err: object, msg: Message) -> None:
        assert err is None, err
        offsets.append(msg.offset() or 0)

    for record in records:
        producer.produce(
            topic_name("dead_letters", kafka.topic_prefix),
            record.value,
            key=record.key,
            headers=record.headers,  # type: ignore[arg-type]
            on_delivery=report,
            **kwargs,
        )
        assert producer.flush(10) == 0
    assert len(offsets) == len(records)
    return offsets


def test_a_timestamp_no_datetime_holds_reads_as_none(
    kafka: KafkaSettings, db: DatabaseSettings, cli_env: None
) -> None:
    letter = dead_letter(
        reason=DeadLetterReason.UNKNOWN_SENSOR,
        detail="sensor TEMPIOT-D0009 is not registered",
        stage=Stage.INGEST,
        payload=b'{"sensor_id": "TEMPIOT-D0009"}',
        key=b"TEMPIOT-D0009",
    )
    # The broker takes any CreateTime a producer sets; this one is 29,720 years BC.
    (offset,) = produce_raw(kafka, [letter], timestamp=-(10**15))
    assert get_dead_letter(kafka, offset).timestamp is None
    assert [(r.reason, r.count) for r in count_dead_letters(kafka)] == [("unknown_sensor", 1)]
    assert "unknown_sensor" in iotmon("dlq", "count")
    assert "1 of 1" in iotmon("dlq", "list")
    # no time: not selected by a time
    assert list_dead_letters(kafka, Selection(since=datetime(1, 1, 1, tzinfo=UTC))).matched == 0


def test_selection_options_times_before_1970_and_offsets_not_found(
    kafka: KafkaSettings, db: DatabaseSettings, cli_env: None
) -> None:
    offsets = produce_letters(kafka)

    # --sensor works on count as on every selecting subcommand
    counted = iotmon("dlq", "count", "--sensor", "TEMPIOT-D0002")
    assert "out_of_range" in counted and "internal_error" in counted
    assert "malformed_json" not in counted
    assert counted.split("total")[1].replace("│", " ").split()[0] == "2"

    # a time before the epoch reads from the start of the topic
    assert "6 of 6" in iotmon("dlq", "list", "--since", "0001-01-01T00:00:00Z")
    assert "6 of 6" in iotmon("dlq", "list", "--since", "1969-12-31")
    assert "6 of 6" in iotmon("dlq", "list", "--last", "2800w")
    early = Selection(since=datetime(1, 1, 1, tzinfo=UTC), stages=frozenset({"ingest"}))
    assert sum(r.count for r in count_dead_letters(kafka, early)) == 4

    # times out of range are usage errors, before any read
    for option, value in (("--last", "99999999999w"), ("--since", "0001-01-01T00:00+01:00")):
        result = CliRunner().invoke(app, ["dlq", "count", option, value])
        assert result.exit_code == 2, result.output
        assert "year" in result.output

    # an offset that holds no dead letter: said, and exit 1
    result = CliRunner().invoke(app, ["dlq", "replay", "--offset", "99999"])
    assert result.exit_code == 1, result.output
    assert "no dead letter at offset 99999" in result.output
    assert "0 re-published" in result.output
    result = CliRunner().invoke(
        app, ["dlq", "replay", "--offset", str(offsets["batch_item"]), "--offset", "99999"]
    )
    assert result.exit_code == 1, result.output
    assert "1 re-published" in result.output
    assert "no dead letter at offset 99999" in result.output
    # one that holds a dead letter the other options leave out is not "not found"
    result = CliRunner().invoke(
        app, ["dlq", "replay", "--offset", str(offsets["malformed"]), "--reason", "too_large"]
    )
    assert result.exit_code == 0, result.output
    assert "other options do not match it" in result.output
    assert "no dead letter" not in result.output
    assert len(replayed_copies(kafka)) == 1


def test_replay_publishes_one_copy_per_record_and_not_one_rejected_again(
    ingest: Running, kafka: KafkaSettings, db: DatabaseSettings, cli_env: None
) -> None:
    # Two readings of sensors nobody registers: the ingest stage rejects them, and every
    # replayed copy of them again.
    captured = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    producer = make_producer(kafka)
    for sensor in ("TEMPIOT-D0011", "TEMPIOT-D0012"):
        producer.produce(
            topic_name("readings_raw", kafka.topic_prefix),
            orjson.dumps(
                {
                    "sensor_id": sensor,
                    "capture_dt": captured.isoformat(),
                    "temperature": 21.5,
                    "humidity": 40.0,
                }
            ),
            key=sensor.encode(),
            headers=[(IngressHeaders.SOURCE, b"mqtt")],
        )
    assert producer.flush(10) == 0
    unknown = Selection(reasons=frozenset({DeadLetterReason.UNKNOWN_SENSOR.value}))

    def letters() -> dict[str, list[int]]:
        """The offsets of the unknown_sensor dead letters of each sensor."""
        found: dict[str, list[int]] = {}
        for letter in list_dead_letters(kafka, unknown, limit=None).letters:
            found.setdefault(letter.key or "", []).append(letter.offset)
        return found

    wait_for(lambda: len(letters()) == 2, what="the two unknown_sensor dead letters")
    (first,), (other,) = letters()["TEMPIOT-D0011"], letters()["TEMPIOT-D0012"]
    # The same rejection once more, as from an ingest stage that re-read the raw record
    # after a crash.
    letter = get_dead_letter(kafka, first)
    headers = [(name, value.encode()) for name, value in letter.headers.items()]
    (retried,) = produce_raw(kafka, [DeadLetterRecord(b"TEMPIOT-D0011", letter.payload, headers)])

    report = replay_dead_letters(kafka, db, unknown)
    assert sorted(o.offset for o in report.replayed) == sorted([retried, other])
    assert [(o.offset, o.note) for o in report.skipped] == [
        (first, f"duplicate of offset {retried}")
    ]
    assert len(replayed_copies(kafka)) == 2

    # Both copies rejected again: new dead letters that name the ones they came from.
    wait_for(lambda: sum(map(len, letters().values())) == 5, what="the copies rejected again")
    again = {sensor: offsets[-1] for sensor, offsets in letters().items()}
    assert replayed_from(get_dead_letter(kafka, again["TEMPIOT-D0011"])) == (0, retried)
    assert replayed_from(get_dead_letter(kafka, again["TEMPIOT-D0012"])) == (0, other)

    # A second replay of the same selection re-publishes nothing.
    output = iotmon("dlq", "replay", "--reason", "unknown_sensor")
    assert "0 re-published, 0 already replayed, 2 rejected again, 3 skipped" in output
    assert f"rejected again after replay of offset {retried}" in output
    assert f"rejected again after replay of offset {other}" in output
    assert output.count(f"duplicate of offset {again['TEMPIOT-D0011']}") == 2
    assert len(replayed_copies(kafka)) == 2

    # --force: one copy of each record, that of its newest dead letter
    report = replay_dead_letters(kafka, db, unknown, force=True)
    assert sorted(o.offset for o in report.replayed) == sorted(again.values())
    assert {o.offset for o in report.skipped} == {first, retried, other}
    assert len(replayed_copies(kafka)) == 4
    assert replays(db) == sorted(
        (offset, "unknown_sensor", sensor, 1)
        for sensor, offset in [*again.items(), ("TEMPIOT-D0011", retried), ("TEMPIOT-D0012", other)]
    )
