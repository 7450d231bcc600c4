"""The aggregates, latest-status and alerts sinks on the real Kafka and PostgreSQL: rows as
the records say, a replay by a second consumer group changes nothing, and a record that
arrives after a newer one (or an alert's events in any order, or twice) leaves the right row."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg.rows import dict_row
from pydantic import BaseModel

from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.kafka import make_producer
from schemas.aggregates import HourlyAggregate, MetricAggregate
from schemas.alerts import AlertEvent, AlertKind, AlertTransition
from schemas.common import Status
from schemas.readings import SensorStatus
from schemas.topics import TopicId, topic_name
from stream_apps.sinks.main import WRITERS, build
from stream_apps.sinks.runner import SinkMetrics, SinkRunner
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

SEOUL = ZoneInfo("Asia/Seoul")
HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)


class RunningSink:
    """One sink's runner in a thread, with its own metrics registry."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.name = name
        self.registry = CollectorRegistry()
        self.runner: SinkRunner[Any] = build(settings, name, SinkMetrics(self.registry))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.runner.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def metric(self, name: str) -> float:
        return self.registry.get_sample_value(name, {"sink": self.name}) or 0.0

    def wait_records(self, n: int) -> None:
        wait_for(
            lambda: self.metric("iotmon_sink_records_total") >= n, what=f"{n} {self.name} records"
        )
        assert self.metric("iotmon_sink_records_total") == n

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.runner.consumer.close()


class Sinks:
    """Starts sinks of this test (each with its own consumer group) and sends to their topics."""

    def __init__(
        self, stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, group_id: str
    ) -> None:
        self.kafka = kafka
        self.db = db
        self.settings = stack.model_copy(
            update={
                "kafka": kafka,
                "db": db,
                "sink": stack.sink.model_copy(
                    update={"group_prefix": group_id, "max_backoff_s": 0.5}
                ),
            }
        )
        self.running: list[RunningSink] = []

    def start(self, name: str, group: str = "") -> RunningSink:
        settings = self.settings
        if group:
            settings = settings.model_copy(
                update={"sink": settings.sink.model_copy(update={"group_prefix": group})}
            )
        sink = RunningSink(settings, name)
        self.running.append(sink)
        return sink

    def replay(self, name: str, records: int) -> RunningSink:
        """A second consumer group reads the whole topic again; stopped when done."""
        sink = self.start(name, group=f"{self.settings.sink.group_prefix}-replay")
        sink.wait_records(records)
        sink.close()
        return sink

    def send(self, topic: TopicId, key: str, records: Sequence[BaseModel]) -> None:
        producer = make_producer(self.kafka)
        for record in records:
            producer.produce(
                topic_name(topic, self.kafka.topic_prefix),
                key=key.encode(),
                value=record.model_dump_json().encode(),
            )
        assert producer.flush(10) == 0

    def rows(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.db.url) as conn:
            conn.execute(f'SET search_path TO "{self.db.db_schema}"')
            return conn.execute(query, params).fetchall()

    def dicts(self, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with psycopg.connect(self.db.url, row_factory=dict_row) as conn:
            conn.execute(f'SET search_path TO "{self.db.db_schema}"')
            return conn.execute(query, params).fetchall()

    def execute(self, query: str, params: Sequence[Any] = ()) -> None:
        with psycopg.connect(self.db.url) as conn:
            conn.execute(f'SET search_path TO "{self.db.db_schema}"')
            conn.execute(query, params)

    def close(self) -> None:
        for sink in self.running:
            if not sink.stop.is_set():
                sink.close()


@pytest.fixture
def sinks(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, group_id: str
) -> Iterator[Sinks]:
    s = Sinks(stack, kafka, db, group_id)
    yield s
    s.close()


def test_the_three_writers_are_registered() -> None:
    assert WRITERS["aggregates"][0] == "aggregates_hourly"
    assert WRITERS["latest"][0] == "latest"
    assert WRITERS["alerts"][0] == "alerts"


# --- hourly aggregates ---------------------------------------------------------------------


def aggregate(
    sensor: str,
    hour: int,
    *,
    count: int,
    final: bool = False,
    updated_min: int = 0,
    pcv: bool = True,
) -> HourlyAggregate:
    start = HOUR + timedelta(hours=hour)
    local = start.astimezone(SEOUL)

    def metric(base: str) -> MetricAggregate:
        b = Decimal(base)
        return MetricAggregate(count=count, sum=b * count, min=b - 1, max=b + Decimal("1.25"))

    return HourlyAggregate(
        sensor_id=sensor,
        loc_id=sensor[-4:],
        hour_start=start,
        ymd=local.strftime("%Y%m%d"),
        hour=local.strftime("%H"),
        temperature=metric("25.10"),
        humidity=metric("50.00"),
        pcv_temperature=metric("26.30") if pcv else None,
        is_final=final,
        updated_at=start + timedelta(minutes=updated_min),
    )


AGG_QUERY = (
    "SELECT sensor_id, hour_start, loc_id, ymd, hour, temperature_count, temperature_sum,"
    " temperature_min, temperature_max, humidity_count, humidity_sum, humidity_min, humidity_max,"
    " pcv_temperature_count, pcv_temperature_sum, pcv_temperature_min, pcv_temperature_max,"
    " is_final, updated_at FROM hourly_aggregates ORDER BY sensor_id, hour_start"
)


def test_aggregates_upserted_and_a_replay_changes_nothing(sinks: Sinks) -> None:
    a, b = "TEMPIOT-A011", "TEMPIOT-B011"
    sinks.send(
        "aggregates_hourly",
        a,
        [
            aggregate(a, 0, count=10, updated_min=10),
            aggregate(a, 0, count=20, updated_min=20),  # same batch, same key: the later wins
            aggregate(a, 1, count=5, updated_min=5, pcv=False),
        ],
    )
    sinks.send("aggregates_hourly", b, [aggregate(b, 0, count=60, final=True, updated_min=62)])
    live = sinks.start("aggregates")
    live.wait_records(4)
    rows = sinks.rows(AGG_QUERY)
    assert len(rows) == 3
    first = sinks.dicts(AGG_QUERY)[0]
    local = HOUR.astimezone(SEOUL)
    assert first["sensor_id"] == a
    assert first["hour_start"] == HOUR
    assert first["loc_id"] == "A011"
    assert (first["ymd"], first["hour"]) == (local.strftime("%Y%m%d"), local.strftime("%H"))
    assert first["temperature_count"] == 20
    assert first["temperature_sum"] == Decimal("502.00")
    assert (first["temperature_min"], first["temperature_max"]) == (
        Decimal("24.10"),
        Decimal("26.35"),
    )
    assert first["is_final"] is False
    assert first["updated_at"] == HOUR + timedelta(minutes=20)
    # a metric without readings: count 0 and NULLs
    assert rows[1][13:17] == (0, None, None, None)
    assert rows[2][0] == b and rows[2][17] is True
    assert live.metric("iotmon_sink_rows_total") == 3

    replay = sinks.replay("aggregates", 4)
    assert sinks.rows(AGG_QUERY) == rows
    assert replay.metric("iotmon_sink_rows_total") == 0


def test_aggregates_are_order_safe(sinks: Sinks) -> None:
    a = "TEMPIOT-A012"
    live = sinks.start("aggregates")
    sinks.send("aggregates_hourly", a, [aggregate(a, 0, count=30, updated_min=30)])
    live.wait_records(1)
    before = sinks.rows(AGG_QUERY)

    # an older provisional arrives late: ignored
    sinks.send("aggregates_hourly", a, [aggregate(a, 0, count=10, updated_min=10)])
    live.wait_records(2)
    assert sinks.rows(AGG_QUERY) == before

    # the final replaces the provisional even with an earlier updated_at
    sinks.send("aggregates_hourly", a, [aggregate(a, 0, count=60, final=True, updated_min=25)])
    live.wait_records(3)
    final = sinks.rows(AGG_QUERY)
    assert final[0][5] == 60 and final[0][17] is True

    # a provisional decided after the final (a late reading re-opening nothing) never
    # overwrites it, alone or in a batch with the final
    sinks.send(
        "aggregates_hourly",
        a,
        [
            aggregate(a, 0, count=61, updated_min=70),
            aggregate(a, 0, count=60, final=True, updated_min=25),
            aggregate(a, 0, count=62, updated_min=75),
        ],
    )
    live.wait_records(6)
    assert sinks.rows(AGG_QUERY) == final


# --- latest status -------------------------------------------------------------------------


def status(sensor: str, second: int, temperature: str, updated_s: int = 1) -> SensorStatus:
    captured = HOUR + timedelta(seconds=second)
    return SensorStatus(
        sensor_id=sensor,
        loc_id=sensor[-4:],
        capture_dt=captured,
        temperature=Decimal(temperature),
        humidity=Decimal("81.5"),
        pcv_temperature=None,
        pcv_computed=False,
        temperature_status=Status.WARNING if Decimal(temperature) >= 35 else Status.NORMAL,
        humidity_status=Status.WARNING,
        pcv_temperature_status=None,
        updated_at=captured + timedelta(seconds=updated_s),
    )


LATEST_QUERY = (
    "SELECT sensor_id, loc_id, capture_dt, temperature, humidity, pcv_temperature,"
    " pcv_computed, temperature_status, humidity_status, pcv_temperature_status, updated_at"
    " FROM latest_readings ORDER BY sensor_id"
)


def test_latest_keeps_the_most_recent_reading(sinks: Sinks) -> None:
    a, b = "TEMPIOT-A011", "TEMPIOT-A031"
    live = sinks.start("latest")
    sinks.send("latest", a, [status(a, 10, "25.0"), status(a, 20, "35.5"), status(a, 15, "30")])
    sinks.send("latest", b, [status(b, 5, "22.25")])
    live.wait_records(4)
    rows = sinks.rows(LATEST_QUERY)
    assert rows == [
        (
            a,
            "A011",
            HOUR + timedelta(seconds=20),
            Decimal("35.50"),
            Decimal("81.50"),
            None,
            False,
            "warning",
            "warning",
            None,
            HOUR + timedelta(seconds=21),
        ),
        (
            b,
            "A031",
            HOUR + timedelta(seconds=5),
            Decimal("22.25"),
            Decimal("81.50"),
            None,
            False,
            "normal",
            "warning",
            None,
            HOUR + timedelta(seconds=6),
        ),
    ]

    # an older reading, read after the newer one: ignored
    sinks.send("latest", a, [status(a, 19, "20.0", updated_s=100)])
    live.wait_records(5)
    assert sinks.rows(LATEST_QUERY) == rows

    # the same reading evaluated again later (e.g. thresholds changed) replaces it
    again = status(a, 20, "35.5", updated_s=50).model_copy(
        update={"temperature_status": Status.CRITICAL}
    )
    sinks.send("latest", a, [again])
    live.wait_records(6)
    assert sinks.rows(LATEST_QUERY)[0][7] == "critical"
    after = sinks.rows(LATEST_QUERY)

    replay = sinks.replay("latest", 6)
    assert sinks.rows(LATEST_QUERY) == after
    assert replay.metric("iotmon_sink_rows_total") == 0


# --- alerts --------------------------------------------------------------------------------

SENSOR = "TEMPIOT-A011"


def alert_event(
    alert_id: uuid.UUID,
    transition: AlertTransition,
    minute: int,
    level: Status = Status.WARNING,
    value: str = "33.5",
) -> AlertEvent:
    limits = {Status.WARNING: ("31.00", "32.90"), Status.CRITICAL: ("33.00", None)}[level]
    return AlertEvent(
        event_id=uuid.uuid5(alert_id, f"{transition}-{minute}"),
        alert_id=alert_id,
        kind=AlertKind.THRESHOLD,
        transition=transition,
        sensor_id=SENSOR,
        loc_id="A011",
        metric="pcv_temperature",
        level=level,
        measured_value=Decimal(value),
        threshold_id=2 if level is Status.WARNING else 3,
        threshold_level="yellow" if level is Status.WARNING else "orange",
        threshold_min=Decimal(limits[0]),
        threshold_max=Decimal(limits[1]) if limits[1] else None,
        reading_time=HOUR + timedelta(minutes=minute, seconds=-30),
        decided_at=HOUR + timedelta(minutes=minute),
        message=f"pcv_temperature {value} {transition}",
    )


def lifecycle(alert_id: uuid.UUID) -> list[AlertEvent]:
    return [
        alert_event(alert_id, AlertTransition.RAISED, 1, value="31.5"),
        alert_event(alert_id, AlertTransition.ESCALATED, 5, Status.CRITICAL, "33.4"),
        alert_event(alert_id, AlertTransition.DEESCALATED, 9, Status.WARNING, "32.1"),
        alert_event(alert_id, AlertTransition.RESOLVED, 15, Status.WARNING, "30.2"),
    ]


ALERT_QUERY = (
    "SELECT alert_id, kind, sensor_id, loc_id, alert_type, alert_level, state, threshold_id,"
    " threshold_type, threshold_level, threshold_min, threshold_max, measured_value, message,"
    " alert_time, reading_time, updated_at, resolved_at, resolved_by, acknowledged_at,"
    " acknowledged_by, ack_note FROM alerts WHERE alert_id = %s"
)


def alert(sinks: Sinks, alert_id: uuid.UUID) -> dict[str, Any]:
    rows = sinks.dicts(ALERT_QUERY, (alert_id,))
    assert len(rows) == 1
    return rows[0]


def test_alert_lifecycle_in_order_and_replayed(sinks: Sinks) -> None:
    alert_id = uuid.uuid4()
    raised, escalated, _, resolved = events = lifecycle(alert_id)
    live = sinks.start("alerts")
    sinks.send("alerts", SENSOR, events[:2])
    live.wait_records(2)
    row = alert(sinks, alert_id)
    assert row["kind"] == "threshold"
    assert (row["sensor_id"], row["loc_id"], row["alert_type"]) == (
        SENSOR,
        "A011",
        "pcv_temperature",
    )
    assert (row["state"], row["alert_level"]) == ("active", "critical")
    assert (row["threshold_id"], row["threshold_type"], row["threshold_level"]) == (
        3,
        "pcv_temperature",
        "orange",
    )
    assert (row["threshold_min"], row["threshold_max"]) == (Decimal("33.00"), None)
    assert row["measured_value"] == Decimal("33.40")
    assert row["message"] == escalated.message
    assert row["alert_time"] == raised.decided_at
    assert row["reading_time"] == raised.reading_time
    assert row["updated_at"] == escalated.decided_at
    assert row["resolved_at"] is None

    # an operator acknowledges it; the sink must keep that
    sinks.execute(
        "UPDATE alerts SET acknowledged_at = %s, acknowledged_by = 'kim', ack_note = 'on it'"
        " WHERE alert_id = %s",
        (escalated.decided_at + timedelta(minutes=1), alert_id),
    )
    sinks.send("alerts", SENSOR, events[2:])
    live.wait_records(4)
    row = alert(sinks, alert_id)
    assert (row["state"], row["alert_level"]) == ("resolved", "warning")
    assert row["threshold_level"] == "yellow"
    assert row["measured_value"] == Decimal("32.10")  # the resolution keeps the last value
    assert (row["resolved_at"], row["resolved_by"]) == (resolved.decided_at, "system")
    assert row["updated_at"] == resolved.decided_at
    assert (row["acknowledged_by"], row["ack_note"]) == ("kim", "on it")
    assert sinks.rows("SELECT count(*) FROM alert_events") == [(4,)]
    payload = sinks.rows(
        "SELECT payload FROM alert_events WHERE event_id = %s", (raised.event_id,)
    )[0][0]
    assert AlertEvent.model_validate(payload) == raised

    replay = sinks.replay("alerts", 4)
    assert alert(sinks, alert_id) == row
    assert sinks.rows("SELECT count(*) FROM alert_events") == [(4,)]
    assert replay.metric("iotmon_sink_rows_total") == 0


def test_alert_events_out_of_order_and_duplicated(sinks: Sinks) -> None:
    alert_id = uuid.uuid4()
    raised, escalated, deescalated, resolved = lifecycle(alert_id)
    live = sinks.start("alerts")

    # the escalation is read before its raise (a replay across partitions)
    sinks.send("alerts", SENSOR, [escalated])
    live.wait_records(1)
    early = alert(sinks, alert_id)
    assert (early["state"], early["alert_level"]) == ("active", "critical")

    sinks.send("alerts", SENSOR, [raised, raised])
    live.wait_records(3)
    row = alert(sinks, alert_id)
    assert row["alert_time"] == raised.decided_at
    assert row["reading_time"] == raised.reading_time
    assert (row["alert_level"], row["updated_at"]) == ("critical", escalated.decided_at)

    # the resolution before the de-escalation, then everything once more
    sinks.send("alerts", SENSOR, [resolved, deescalated, escalated, raised, resolved])
    live.wait_records(8)
    row = alert(sinks, alert_id)
    assert (row["state"], row["resolved_at"], row["resolved_by"]) == (
        "resolved",
        resolved.decided_at,
        "system",
    )
    assert (row["alert_level"], row["measured_value"]) == ("warning", Decimal("32.10"))
    assert row["alert_time"] == raised.decided_at
    assert sinks.rows("SELECT count(*) FROM alert_events") == [(4,)]

    # the same events in order give the same row
    other = uuid.uuid4()
    sinks.send("alerts", SENSOR, lifecycle(other))
    live.wait_records(12)
    assert alert(sinks, other) == {**row, "alert_id": other}


def test_a_resolved_alert_is_never_reactivated(sinks: Sinks) -> None:
    live = sinks.start("alerts")
    # resolved by the system, then an (anomalous) later escalation of the same alert
    first = uuid.uuid4()
    raised, _, _, resolved = lifecycle(first)
    late = alert_event(first, AlertTransition.ESCALATED, 20, Status.CRITICAL, "35.0")
    sinks.send("alerts", SENSOR, [raised, resolved, late])
    live.wait_records(3)
    row = alert(sinks, first)
    assert (row["state"], row["alert_level"], row["updated_at"]) == (
        "resolved",
        "warning",
        resolved.decided_at,
    )

    # resolved by a person before the system did: the stream's escalation changes the level
    # but the alert stays resolved, by that person
    second = uuid.uuid4()
    raised2 = alert_event(second, AlertTransition.RAISED, 1)
    sinks.send("alerts", SENSOR, [raised2])
    live.wait_records(4)
    sinks.execute(
        "UPDATE alerts SET state = 'resolved', resolved_at = %s, resolved_by = 'kim',"
        " resolve_note = 'fan fixed' WHERE alert_id = %s",
        (raised2.decided_at + timedelta(minutes=1), second),
    )
    escalated2 = alert_event(second, AlertTransition.ESCALATED, 5, Status.CRITICAL, "33.4")
    sinks.send("alerts", SENSOR, [escalated2])
    live.wait_records(5)
    row = alert(sinks, second)
    assert (row["state"], row["resolved_by"]) == ("resolved", "kim")
    assert row["alert_level"] == "critical"
    assert sinks.rows("SELECT resolve_note FROM alerts WHERE alert_id = %s", (second,)) == [
        ("fan fixed",)
    ]


def test_an_alert_the_stream_lost_is_superseded_by_the_next_one(sinks: Sinks) -> None:
    """The stream's state lost an active alert (its raise is stored, nothing will resolve
    it); the next alert of the same sensor and metric resolves it as superseded.  Another
    metric's alert is left alone; an out-of-order replay of the lost alert's own resolution
    replaces the supersession."""
    live = sinks.start("alerts")
    lost, other_metric, newer = (uuid.uuid4() for _ in range(3))
    temperature = alert_event(other_metric, AlertTransition.RAISED, 2).model_copy(
        update={"metric": "temperature"}
    )
    sinks.send(
        "alerts",
        SENSOR,
        [
            alert_event(lost, AlertTransition.RAISED, 1),
            temperature,
        ],
    )
    live.wait_records(2)
    raised = alert_event(newer, AlertTransition.RAISED, 30)
    sinks.send("alerts", SENSOR, [raised])
    live.wait_records(3)

    row = alert(sinks, lost)
    assert (row["state"], row["resolved_by"], row["resolved_at"]) == (
        "resolved",
        "superseded",
        raised.decided_at,
    )
    [(note,)] = sinks.rows("SELECT resolve_note FROM alerts WHERE alert_id = %s", (lost,))
    assert str(newer) in note
    assert alert(sinks, newer)["state"] == "active"
    assert alert(sinks, other_metric)["state"] == "active"  # another metric
    active = sinks.rows(
        "SELECT count(*) FROM alerts WHERE state = 'active' AND sensor_id = %s"
        " AND alert_type = 'pcv_temperature'",
        (SENSOR,),
    )
    assert active == [(1,)]

    # The lost alert's own resolution, replayed late: it is the true end.
    own = alert_event(lost, AlertTransition.RESOLVED, 12)
    sinks.send("alerts", SENSOR, [own])
    live.wait_records(4)
    row = alert(sinks, lost)
    assert (row["state"], row["resolved_by"], row["resolved_at"]) == (
        "resolved",
        "system",
        own.decided_at,
    )
    # and the supersession's note went with it
    assert sinks.rows("SELECT resolve_note FROM alerts WHERE alert_id = %s", (lost,)) == [(None,)]

    # A replay of older data, decided later, does not supersede the alert that is active:
    # it is the one superseded.
    replayed = alert_event(uuid.uuid4(), AlertTransition.RAISED, 20).model_copy(
        update={"decided_at": HOUR + timedelta(hours=2)}
    )
    sinks.send("alerts", SENSOR, [replayed])
    live.wait_records(5)
    assert alert(sinks, newer)["state"] == "active"
    row = alert(sinks, replayed.alert_id)
    assert (row["state"], row["resolved_by"]) == ("resolved", "superseded")
    assert row["resolved_at"] >= row["alert_time"]
