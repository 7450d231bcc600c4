"""The ingest stage on the real Kafka: validation once, dead letters with reasons, batches."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import psycopg
import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.gateway import GatewayProducer
from producers.kafka import make_producer
from producers.masterdata import MasterData, import_master_data
from schemas.deadletters import DeadLetterHeaders
from schemas.master import Location, Sensor
from schemas.readings import ReadingBatch
from schemas.topics import topic_name
from stream_apps.common.partitioning import partition_for
from stream_apps.ingest.main import build
from stream_apps.ingest.processor import IngestProcessor
from tests.helpers import headers_of, read_topic, value_of, wait_for

pytestmark = pytest.mark.integration

SENSORS = [f"TEMPIOT-A0{n:02d}" for n in range(11, 21)]


def plant() -> MasterData:
    return MasterData(
        [
            Location(loc_id=s[-4:], factory="SinPyeong", building="MX-1", floor=1, area="Storage")
            for s in SENSORS
        ],
        [Sensor(sensor_id=s, loc_id=s[-4:]) for s in SENSORS],
    )


def settings_for(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, group: str, **ingest: object
) -> Settings:
    return stack.model_copy(
        update={
            "kafka": kafka,
            "db": db,
            "ingest": stack.ingest.model_copy(update={"group_id": group, **ingest}),
        }
    )


class Running:
    def __init__(self, settings: Settings) -> None:
        self.registry = CollectorRegistry()
        self.processor = build(settings, self.registry)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.processor.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels or None) or 0.0

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.processor.consumer.close()
        self.processor.directory.close()


@pytest.fixture
def ingest(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, group_id: str
) -> Iterator[Running]:
    import_master_data(db, kafka, plant())
    running = Running(settings_for(stack, kafka, db, group_id))
    yield running
    running.close()


def now_iso(delta: timedelta = timedelta(0)) -> str:
    return (datetime.now(UTC) + delta).isoformat().replace("+00:00", "Z")


def reading(sensor: str, at: str | None = None, **over: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "sensor_id": sensor,
        "capture_dt": at or now_iso(),
        "temperature": 22.1,
        "humidity": 77.7,
    }
    doc.update(over)
    return doc


def batches(kafka: KafkaSettings, expected: int) -> list[tuple[int, ReadingBatch]]:
    msgs = read_topic(
        kafka,
        topic_name("readings", kafka.topic_prefix),
        until=lambda m: (
            sum(len(ReadingBatch.model_validate_json(value_of(x)).readings) for x in m) >= expected
        ),
    )
    return [(m.partition() or 0, ReadingBatch.model_validate_json(value_of(m))) for m in msgs]


def test_readings_batched_per_partition_with_computed_pcv(
    ingest: Running, kafka: KafkaSettings
) -> None:
    t0 = datetime.now(UTC) - timedelta(minutes=30)
    with GatewayProducer(kafka) as gw:
        for i in range(200):
            sensor = SENSORS[i % len(SENSORS)]
            gw.send(reading(sensor, (t0 + timedelta(seconds=i)).isoformat()))
        # the original system's row format, naive KST time
        kst = (t0 + timedelta(hours=9)).strftime("%Y-%m-%d %H:%M:%S")
        gw.send(
            {"sensor_id": SENSORS[0], "capture_dt": kst, "t1": "30.0", "t2": "50.0", "t3": "29.5"}
        )
        # a batch array becomes its readings
        gw.send_batch(
            SENSORS[1],
            [
                reading(SENSORS[1], (t0 + timedelta(minutes=5, seconds=i)).isoformat())
                for i in range(5)
            ],
        )
    got = batches(kafka, 206)
    readings = [r for _, b in got for r in b.readings]
    assert len(readings) == 206
    for partition, batch in got:
        for r in batch.readings:
            assert partition_for(r.sensor_id, 6) == partition
    computed = [r for r in readings if r.pcv_computed]
    assert len(computed) == 205
    assert {r.pcv_temperature for r in computed} == {Decimal("23.8")}
    original = [r for r in readings if r.temperature == Decimal("30.0")]
    assert len(original) == 1
    assert original[0].capture_dt == t0.replace(microsecond=0)
    assert original[0].pcv_temperature == Decimal("29.5")
    assert original[0].loc_id == SENSORS[0][-4:]
    wait_for(lambda: ingest.metric("iotmon_ingest_accepted_total", source="kafka") == 206)


def test_every_kind_of_bad_input_is_dead_lettered_and_counted(
    ingest: Running, kafka: KafkaSettings
) -> None:
    s = SENSORS[0]
    bad: list[tuple[bytes, str]] = [
        (b"", "empty_payload"),
        (b'{"sensor_id": "TEMPIOT-A011", "capt', "malformed_json"),
        (b"\xc3\x28 not utf-8", "invalid_utf8"),
        (b'"just a string"', "not_an_object"),
        (orjson.dumps({"sensor_id": s, "capture_dt": now_iso(), "humidity": 50}), "missing_field"),
        (orjson.dumps(reading(s, temperature={"v": 1})), "wrong_type"),
        (orjson.dumps(reading(s)).replace(b"22.1", b"NaN"), "not_finite"),
        (orjson.dumps(reading(s, humidity=140)), "out_of_range"),
        (orjson.dumps(reading(s, now_iso(timedelta(hours=2)))), "future_timestamp"),
        (orjson.dumps(reading(s, now_iso(-timedelta(days=30)))), "stale_timestamp"),
        (orjson.dumps(reading("TEMPIOT-Z999")), "unknown_sensor"),
        (b"[" + b" " * (1024 * 1024 + 10) + b"]", "too_large"),
    ]
    good_between = 0
    with GatewayProducer(kafka) as gw:
        for payload, reason in bad:
            gw.send_raw("TEMPIOT-Z999" if reason == "unknown_sensor" else s, payload)
            gw.send(reading(SENSORS[2], now_iso(-timedelta(seconds=good_between + 1))))
            good_between += 1
    dead = read_topic(
        kafka,
        topic_name("dead_letters", kafka.topic_prefix),
        until=lambda m: len(m) >= len(bad),
        timeout=45,
    )
    reasons = [headers_of(m)[DeadLetterHeaders.REASON].decode() for m in dead]
    assert sorted(reasons) == sorted(r for _, r in bad)
    by_reason = {headers_of(m)[DeadLetterHeaders.REASON].decode(): m for m in dead}
    for payload, reason in bad:
        msg = by_reason[reason]
        assert msg.value() == payload, reason  # the original bytes, unchanged
        h = headers_of(msg)
        assert h[DeadLetterHeaders.DETAIL]
        assert h[DeadLetterHeaders.SOURCE] == b"kafka"
        assert (
            h[DeadLetterHeaders.ORIGIN_TOPIC]
            == topic_name("readings_raw", kafka.topic_prefix).encode()
        )
    # the pipeline kept going: every good reading in between arrived
    got = batches(kafka, good_between)
    assert sum(len(b.readings) for _, b in got) == good_between
    counts = Counter(r for _, r in bad)

    def counted() -> bool:
        return all(
            ingest.metric("iotmon_ingest_rejected_total", reason=reason) == n
            for reason, n in counts.items()
        )

    wait_for(counted, what="rejection counters by reason")


def test_a_bad_item_in_a_batch_is_dead_lettered_alone(
    ingest: Running, kafka: KafkaSettings
) -> None:
    items = [reading(SENSORS[3], now_iso(-timedelta(seconds=i + 1))) for i in range(4)]
    items[2]["humidity"] = "wet"
    with GatewayProducer(kafka) as gw:
        gw.send_batch(SENSORS[3], items)
    dead = read_topic(
        kafka, topic_name("dead_letters", kafka.topic_prefix), until=lambda m: len(m) >= 1
    )
    assert len(dead) == 1
    h = headers_of(dead[0])
    assert (h[DeadLetterHeaders.REASON], h[DeadLetterHeaders.INDEX]) == (b"wrong_type", b"2")
    assert orjson.loads(value_of(dead[0])) == items[2]
    assert sum(len(b.readings) for _, b in batches(kafka, 3)) == 3


def test_master_data_changes_reach_the_running_ingest(
    ingest: Running, kafka: KafkaSettings, db: DatabaseSettings
) -> None:
    newcomer = "TEMPIOT-C777"
    with GatewayProducer(kafka) as gw:
        gw.send(reading(newcomer))
    wait_for(lambda: ingest.metric("iotmon_ingest_rejected_total", reason="unknown_sensor") == 1)
    import_master_data(
        db,
        kafka,
        MasterData(
            [Location(loc_id="C777", factory="JangNim", building="B-2", floor=3)],
            [Sensor(sensor_id=newcomer, loc_id="C777")],
        ),
    )
    wait_for(
        lambda: ingest.processor.directory.get(newcomer) is not None,
        timeout=10,
        what="the new sensor in the running directory",
    )
    with GatewayProducer(kafka) as gw:
        gw.send(reading(newcomer))
    got = batches(kafka, 1)
    assert [r.sensor_id for _, b in got for r in b.readings] == [newcomer]


def test_auto_registration_by_convention(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, group_id: str
) -> None:
    import_master_data(db, kafka, plant())
    running = Running(settings_for(stack, kafka, db, group_id, auto_register=True))
    try:
        with GatewayProducer(kafka) as gw:
            gw.send(reading("TEMPIOT-A011"))
            gw.send(reading("NEWGW-X123"))
        got = batches(kafka, 2)
        assert {(r.sensor_id, r.loc_id) for _, b in got for r in b.readings} == {
            ("TEMPIOT-A011", "A011"),
            ("NEWGW-X123", "X123"),
        }
        with psycopg.connect(db.url) as conn:
            conn.execute(f'SET search_path TO "{db.db_schema}"')
            row = conn.execute(
                "SELECT loc_id, auto_registered FROM sensors WHERE sensor_id = 'NEWGW-X123'"
            ).fetchone()
            # a properly registered location is never overwritten by auto-registration
            factory = conn.execute("SELECT factory FROM locations WHERE loc_id = 'A011'").fetchone()
        assert row == ("X123", True)
        assert factory == ("SinPyeong",)
        assert running.metric("iotmon_ingest_sensors_registered_total") == 1
    finally:
        running.close()


def _committed(processor: IngestProcessor, kafka: KafkaSettings) -> int:
    """Raw records the ingest group has committed, over all partitions."""
    raw = topic_name("readings_raw", kafka.topic_prefix)
    parts = [TopicPartition(raw, p) for p in range(kafka.default_partitions)]
    return sum(max(tp.offset, 0) for tp in processor.consumer.committed(parts, timeout=10))


def _raw_end(kafka: KafkaSettings) -> int:
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "ends"})
    try:
        raw = topic_name("readings_raw", kafka.topic_prefix)
        return sum(
            consumer.get_watermark_offsets(TopicPartition(raw, p), timeout=10)[1]
            for p in range(kafka.default_partitions)
        )
    finally:
        consumer.close()


def test_offsets_are_committed_when_due_after_kafka_confirmed_the_outputs(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, group_id: str
) -> None:
    """Ingest confirms its outputs and commits at most every ``commit_every_s``, and when it
    stops: never before Kafka has what the committed records produced."""
    import_master_data(db, kafka, plant())
    processor = build(
        settings_for(stack, kafka, db, group_id, commit_every_s=3600), CollectorRegistry()
    )
    try:
        t0 = datetime.now(UTC) - timedelta(minutes=5)
        with GatewayProducer(kafka) as gw:
            for i in range(50):
                gw.send(reading(SENSORS[i % len(SENSORS)], (t0 + timedelta(seconds=i)).isoformat()))
        total = _raw_end(kafka)
        consumed = 0
        deadline = time.monotonic() + 30
        while consumed < total and time.monotonic() < deadline:
            consumed += processor.step()
        assert consumed == total == 50
        assert _committed(processor, kafka) == 0  # not due yet: nothing committed
        processor.commit()  # what `run` does when it stops (and a revocation does)
        assert _committed(processor, kafka) == 50
        # the outputs of every committed record were confirmed before the commit
        assert sum(len(b.readings) for _, b in batches(kafka, 50)) == 50
    finally:
        processor.consumer.close()
        processor.directory.close()
    # Due at every step: each step's records are committed by that step.
    processor = build(
        settings_for(stack, kafka, db, f"{group_id}-b", commit_every_s=0), CollectorRegistry()
    )
    try:
        deadline = time.monotonic() + 30
        while _committed(processor, kafka) < 50 and time.monotonic() < deadline:
            processor.step()
        assert _committed(processor, kafka) == 50
    finally:
        processor.consumer.close()
        processor.directory.close()


def _consume(processor: IngestProcessor, expected: int) -> int:
    consumed = 0
    deadline = time.monotonic() + 30
    while consumed < expected and time.monotonic() < deadline:
        consumed += processor.step()
    return consumed


def test_a_refused_output_is_never_followed_by_a_commit(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, group_id: str
) -> None:
    """Once Kafka refused an output, the offsets consumed since the last commit cover a
    lost output: no later commit (nor the one on revocation) may cover them."""
    import_master_data(db, kafka, plant())
    settings = settings_for(stack, kafka, db, group_id, commit_every_s=3600)
    processor = build(settings, CollectorRegistry())
    # Outputs go to a topic that does not exist (topics are never auto-created here), and
    # the producer gives up on them after 1.5 s.
    processor.producer = make_producer(kafka, **{"message.timeout.ms": 1500})
    processor.topics = dataclasses.replace(
        processor.topics, readings=f"{kafka.topic_prefix}no-such-topic"
    )
    try:
        with GatewayProducer(kafka) as gw:
            for i in range(10):
                gw.send(reading(SENSORS[i], now_iso(timedelta(seconds=-i))))
        assert _consume(processor, 10) == 10
        with pytest.raises(KafkaException, match="refused"):
            processor.commit()
        with pytest.raises(KafkaException, match="refused"):
            processor.commit()  # still refused: the lost outputs are not forgotten
        processor._on_revoke(processor.consumer, [])  # a revocation commits nothing either
        assert _committed(processor, kafka) == 0
    finally:
        processor.consumer.close()
        processor.directory.close()


def test_a_poll_that_fails_half_way_is_not_committed(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, group_id: str
) -> None:
    """Offsets become committable only once every output of their poll is produced."""
    import_master_data(db, kafka, plant())
    # Registering an unknown sensor needs the database, which is unreachable here.
    unreachable = db.model_copy(update={"url": "postgresql://iotmon@127.0.0.1:1/iotmon"})
    settings = settings_for(stack, kafka, unreachable, group_id, commit_every_s=3600)
    settings = settings.model_copy(
        update={"ingest": settings.ingest.model_copy(update={"auto_register": True})}
    )
    registry = CollectorRegistry()
    processor = build(settings, registry)
    try:
        with GatewayProducer(kafka) as gw:
            gw.send(reading(SENSORS[0]))
        assert _consume(processor, 1) == 1
        processor.commit()
        assert _committed(processor, kafka) == 1
        with GatewayProducer(kafka) as gw:
            gw.send(reading(SENSORS[1]))
            gw.send(reading("TEMPIOT-Z999"))  # unknown: its registration fails
        # The database being away is no fault of the record: the stage pauses and retries
        # (never dead-letters) until it is stopped.
        stop = threading.Event()
        timer = threading.Timer(3.0, stop.set)
        timer.start()
        try:
            while not stop.is_set():
                processor.step(stop)
        finally:
            timer.cancel()
        failures = registry.get_sample_value(
            "iotmon_stage_infrastructure_failures_total", {"stage": "ingest"}
        )
        assert failures is not None and failures >= 2
        assert registry.get_sample_value("iotmon_stage_poison_total", {"stage": "ingest"}) is None
        processor.commit()  # what stopping (or a revocation) does after the failure
        assert _committed(processor, kafka) == 1  # the failed poll is read again later
        processor.producer.flush(10)
        outputs = read_topic(
            kafka, topic_name("readings", kafka.topic_prefix), until=lambda m: False, timeout=3
        )
        sent = [
            r.sensor_id
            for m in outputs
            for r in ReadingBatch.model_validate_json(value_of(m)).readings
        ]
        assert sent == [SENSORS[0]]  # nothing of the failed poll went out
    finally:
        processor.consumer.close()
        processor.directory.close()
