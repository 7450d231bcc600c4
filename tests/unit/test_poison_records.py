"""The worker's poison-record boundary without a broker: a record the worker fails on leaves
no trace in the state and the outputs, and the records around it keep theirs exactly once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import faust
import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from confluent_kafka import KafkaException
from prometheus_client import CollectorRegistry

from iotmon.settings import WorkerSettings
from schemas.deadletters import DeadLetter
from schemas.master import Location
from schemas.readings import Reading, ReadingBatch, SensorStatus
from schemas.topics import topic_name
from stream_apps.processing.applying import Applier, Tables
from stream_apps.processing.batches import BatchSender
from stream_apps.processing.engine import PartitionState, SensorState
from stream_apps.processing.failures import OutputRefused, is_infrastructure
from stream_apps.processing.faust_glue import FaustTable
from stream_apps.processing.metrics import WorkerMetrics
from stream_apps.processing.processor import Processor
from stream_apps.processing.rules import ThresholdIndex
from stream_apps.processing.windows import HourWindow

pytestmark = pytest.mark.unit

PREFIX = "unit."
PARTITION = 0
HOUR = datetime(2025, 8, 1, 0, 0, tzinfo=UTC)
RECORD_TIME = (HOUR + timedelta(hours=1)).timestamp()
S1, S2, BAD = "TEMPIOT-U001", "TEMPIOT-U002", "TEMPIOT-U666"
# Its local hour (Asia/Seoul) is in the year 10000: the engine raises OverflowError.
FAR_FUTURE = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


class MemoryTable:
    """A table as a dict (the state store's ``Table``); see test_tables_keep_one_contract."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.data: dict[bytes, bytes] = {}
        self.get = self.data.get

    def storage(self) -> dict[bytes, bytes]:
        return self.data

    def changelog(self) -> str:
        return f"{self.name}-changelog"


class NoViews:
    """No sensor has a location (the default zone applies), no thresholds."""

    index = ThresholdIndex(())

    def location(self, sensor_id: str) -> Location | None:
        return None


def reading(sensor: str, minute: int, temperature: str = "20.0") -> Reading:
    at = HOUR + timedelta(minutes=minute)
    return Reading(
        sensor_id=sensor,
        loc_id=sensor[-4:],
        capture_dt=at,
        temperature=Decimal(temperature),
        humidity=Decimal("50.0"),
        pcv_temperature=None,
        source="kafka",
        received_at=at,
    )


def record(*readings: Reading) -> bytes:
    return ReadingBatch(readings=list(readings)).model_dump_json().encode()


def poison() -> bytes:
    """A reading the engine counts, then one it raises on: a partial effect if not undone."""
    far = reading(S1, 0).model_copy(update={"capture_dt": FAR_FUTURE})
    return record(reading(S1, 50, "77.7"), far)


GOOD = [
    record(*(reading(S, m, f"2{m}.0") for S in (S1, S2) for m in range(6))),
    record(*(reading(S1, m) for m in range(6, 10))),
    record(reading(S2, 7, "30.5"), reading(S1, 12, "19.0")),
]


def read_nothing(partition: int, start: int, end: int) -> list[tuple[int, float, bytes]]:
    raise AssertionError(f"no repair expected, asked for {start}..{end - 1}")


def processor(
    read_range: Callable[[int, int, int], list[tuple[int, float, bytes]]] = read_nothing,
    cls: type[Applier] = Applier,
) -> tuple[Processor, CollectorRegistry]:
    def no_producer() -> Any:
        raise AssertionError("nothing is sent here")

    def refused(exc: BaseException) -> None:
        raise AssertionError(exc)

    registry = CollectorRegistry()
    tables = Tables(
        sensors=MemoryTable("sensor-state"),
        partitions=MemoryTable("partition-state"),
        chunks=MemoryTable("sensor-seen"),
    )
    applier = cls(
        WorkerSettings(),
        topic_prefix=PREFIX,
        partitions=1,
        tables=tables,
        sender=BatchSender(no_producer, refused),
        views=NoViews(),
        metrics=WorkerMetrics(registry),
        committed=lambda partition: None,
    )
    return Processor(applier, topic_prefix=PREFIX, read_range=read_range), registry


def run(p: Processor, records: list[tuple[int, bytes]]) -> Processor:
    """One batch of (offset, value) records, staged as a flush would."""
    for offset, value in records:
        p.process(PARTITION, offset, RECORD_TIME, None, value)
    p.stage()
    return p


def reference(values: list[bytes]) -> Processor:
    """The same records without the poison ones."""
    return run(processor()[0], list(enumerate(values)))


def stored(p: Processor, table: str, key: str, model: type[Any]) -> Any:
    tables = {"sensors": p.applier.tables.sensors, "partitions": p.applier.tables.partitions}
    value = tables[table].get(key.encode())
    return None if value is None else model.model_validate_json(value)


def windows(p: Processor) -> dict[str, dict[datetime, HourWindow]]:
    out = {}
    for sid in (S1, S2, BAD):
        state = stored(p, "sensors", sid, SensorState)
        if state is not None:
            out[sid] = state.windows
    return out


def partition_state(p: Processor) -> PartitionState:
    state = stored(p, "partitions", str(PARTITION), PartitionState)
    assert isinstance(state, PartitionState)
    return state


def dead_letters(p: Processor) -> list[DeadLetter]:
    return [
        DeadLetter.parse(partition=partition, offset=0, key=key, value=value, headers=headers)
        for partition, key, value, headers in p.sender.queued(topic_name("dead_letters", PREFIX))
    ]


def statuses(p: Processor) -> dict[str, datetime]:
    out = {}
    for _, _, value, _ in p.sender.queued(topic_name("latest", PREFIX)):
        assert value is not None
        status = SensorStatus.model_validate_json(value)
        out[status.sensor_id] = status.capture_dt
    return out


def counted(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    ("bad", "error"), [(poison(), "OverflowError"), (b"\xff not json", "ValidationError")]
)
def test_a_failed_record_leaves_no_trace_and_the_others_count_once(bad: bytes, error: str) -> None:
    p, registry = processor()
    run(p, [(0, GOOD[0]), (1, bad), (2, GOOD[1]), (3, GOOD[2])])
    expected = reference(GOOD)
    assert windows(p) == windows(expected)
    assert max(w.temperature.max or 0 for w in windows(p)[S1].values()) < Decimal("77.7")
    got, want = partition_state(p), partition_state(expected)
    assert (got.watermark, got.sensors) == (want.watermark, want.sensors)
    assert got.last_offset == 3  # the failed record too: no gap to repair later
    assert got.sensor_offsets == {S1: 3, S2: 3}
    assert statuses(p) == {S1: HOUR + timedelta(minutes=12), S2: HOUR + timedelta(minutes=7)}
    (letter,) = dead_letters(p)
    assert (letter.reason, letter.stage, letter.error) == ("internal_error", "worker", error)
    assert (letter.origin_topic, letter.origin_partition, letter.origin_offset) == (
        topic_name("readings", PREFIX),
        PARTITION,
        1,
    )
    assert letter.payload == bad
    assert counted(registry, "iotmon_worker_dead_letters_total", reason="internal_error") == 1
    assert counted(registry, "iotmon_worker_records_total", kind="readings") == 3
    assert counted(registry, "iotmon_worker_readings_total") == 12 + 4 + 2


def test_records_between_failed_ones_are_applied_exactly_once() -> None:
    p, registry = processor()
    batch = [(0, GOOD[0]), (1, poison()), (2, GOOD[1]), (3, b"[]"), (4, poison()), (5, GOOD[2])]
    run(p, batch)
    assert windows(p) == windows(reference(GOOD))
    assert [d.origin_offset for d in dead_letters(p)] == [1, 3, 4]
    assert partition_state(p).last_offset == 5
    assert counted(registry, "iotmon_worker_records_total", kind="readings") == 3
    assert counted(registry, "iotmon_worker_dead_letters_total", reason="internal_error") == 3


def test_a_failed_record_is_not_taken_for_a_lost_one_in_the_next_batch() -> None:
    p, _ = processor()  # read_nothing: a repair would fail the record (and the test)
    run(p, [(0, GOOD[0]), (1, poison())])
    run(p, [(2, GOOD[1])])  # staged, not sent: the sender still holds both batches
    assert [d.origin_offset for d in dead_letters(p)] == [1]
    assert windows(p) == windows(reference(GOOD[:2]))


def test_the_repair_skips_a_record_that_fails_again_without_a_second_dead_letter() -> None:
    # The partition as Kafka keeps it; the tables hold the state after offset 0 only.
    kafka_log = [GOOD[0], GOOD[1], b"\xff", poison(), GOOD[2]]

    def read_range(partition: int, start: int, end: int) -> list[tuple[int, float, bytes]]:
        return [(o, RECORD_TIME, kafka_log[o]) for o in range(start, end)]

    p, registry = processor(read_range)
    run(p, [(0, GOOD[0])])
    run(p, [(4, GOOD[2])])  # offsets 1-3 are missing from the state: repaired first
    assert windows(p) == windows(reference(GOOD))
    assert partition_state(p).last_offset == 4
    assert dead_letters(p) == []
    assert counted(registry, "iotmon_worker_state_gaps_total") == 1
    assert counted(registry, "iotmon_worker_repair_rejects_total") == 2


class WritesFailFor(Applier):
    """A worker whose outputs of sensor BAD cannot be written."""

    def stage(self) -> None:
        if BAD in self.changed.newest:
            raise ValueError(f"cannot write the status of {BAD}")
        super().stage()


def test_a_record_whose_effects_fail_to_be_written_is_found_and_dead_lettered() -> None:
    p, registry = processor(cls=WritesFailFor)
    bad = record(reading(BAD, 3), reading(S1, 40, "50.0"))
    run(p, [(0, GOOD[0]), (1, GOOD[1]), (2, bad), (3, GOOD[2])])
    assert windows(p) == windows(reference(GOOD))
    assert partition_state(p).last_offset == 3
    (letter,) = dead_letters(p)
    assert (letter.origin_offset, letter.error, letter.payload) == (2, "ValueError", bad)
    assert BAD not in statuses(p)
    assert counted(registry, "iotmon_worker_records_total", kind="readings") == 4
    assert counted(registry, "iotmon_worker_dead_letters_total", reason="internal_error") == 1


def test_infrastructure_failures_are_told_from_bad_records() -> None:
    assert is_infrastructure(OutputRefused("refused"))
    assert is_infrastructure(KafkaConnectionError())
    assert is_infrastructure(KafkaException("all brokers down"))
    wrapped = RuntimeError("while sending")
    wrapped.__cause__ = KafkaTimeoutError()
    assert is_infrastructure(wrapped)
    assert not is_infrastructure(ValueError("bad JSON"))
    assert not is_infrastructure(OverflowError("date value out of range"))


def faust_table() -> FaustTable:
    app = faust.App(
        "unit-tables",
        broker="kafka://127.0.0.1:1",  # never connected: the app is not started
        store="memory://",
        web_enabled=False,
        table_key_serializer="raw",
        table_value_serializer="raw",
    )
    return FaustTable(app.Table("sensor-state", partitions=1, key_type=bytes, value_type=bytes))


@pytest.mark.parametrize("make", [faust_table, lambda: MemoryTable("sensor-state")])
def test_tables_keep_one_contract(make: Callable[[], Any]) -> None:
    """What the state store relies on, for the Faust table and the one these tests use."""
    table = make()
    assert table.name == "sensor-state"
    assert table.changelog().endswith("sensor-state-changelog")
    assert table.get(b"k") is None
    table.storage()[b"k"] = b"v"
    assert table.get(b"k") == b"v"
    table.storage().pop(b"k", None)
    assert table.get(b"k") is None
