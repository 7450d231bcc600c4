"""Ingest and the shared stage loop survive any single record: real Kafka and Mosquitto.

* The message that used to kill ingest (a 27-digit temperature, sent over MQTT through the
  bridge) is rejected with a reason, and the readings after it are validated as usual.
* The loop's boundary itself, with a small stage on the real broker: a record whose
  preparation raises, and one that makes the batch write raise, are dead-lettered alone
  (the write is bisected down to it) while the others are written; a service that is away
  is retried with the partitions paused, never dead-lettered.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import timedelta

import orjson
import pytest
from confluent_kafka import Consumer, Message, TopicPartition
from prometheus_client import CollectorRegistry

from iotmon.settings import DatabaseSettings, KafkaSettings, MqttSettings, Settings
from producers.kafka import make_producer
from producers.masterdata import import_master_data
from schemas.deadletters import DeadLetterHeaders as H
from schemas.deadletters import Stage
from schemas.topics import topic_name
from stream_apps.common.stage import Polling, Prepared, StageMetrics, StageRunner
from tests.helpers import headers_of, read_topic, wait_for
from tests.integration.test_bridge import publish
from tests.integration.test_bridge_poison import running_bridge
from tests.integration.test_ingest import (
    SENSORS,
    Running,
    batches,
    now_iso,
    plant,
    reading,
    settings_for,
)

pytestmark = pytest.mark.integration


def test_the_27_digit_temperature_over_mqtt_is_rejected_and_ingest_goes_on(
    stack: Settings,
    kafka: KafkaSettings,
    db: DatabaseSettings,
    mqtt: MqttSettings,
    group_id: str,
) -> None:
    import_master_data(db, kafka, plant())
    ingest = Running(settings_for(stack, kafka, db, group_id))
    sensor = SENSORS[0]
    topic = f"{mqtt.topic_prefix}sensors/{sensor}/readings"
    poison = orjson.dumps(reading(sensor, temperature="999999999999999999999999999.999"))
    good = [orjson.dumps(reading(sensor, now_iso(-timedelta(seconds=i)))) for i in range(1, 6)]
    try:
        with running_bridge(kafka, mqtt):
            publish(mqtt, [(topic, poison), *((topic, g) for g in good)])
            got = batches(kafka, 5)
            dead = read_topic(kafka, topic_name("dead_letters", kafka.topic_prefix), until=bool)
        assert ingest.thread.is_alive()  # the same process
        assert sum(len(b.readings) for _, b in got) == 5
        (letter,) = dead
        headers = headers_of(letter)
        assert headers[H.REASON] == b"out_of_range"
        assert headers[H.STAGE] == b"ingest"
        assert b"temperature" in headers[H.DETAIL]
        assert letter.value() == poison
        assert headers["mqtt.topic"] == topic.encode()
    finally:
        ingest.close()


class Flaky(ConnectionError):
    """A service that is away (declared transient by the stage)."""


class Numbers(StageRunner[int]):
    """A stage that reads decimal numbers and writes their doubles to another topic.

    It fails on what is not a number (prepare), on 13 (write: bad data the write only
    finds), and, for the first ``outage`` writes, as if its service were away."""

    stage = Stage.INGEST
    transient = (Flaky,)

    def __init__(self, kafka: KafkaSettings, group: str, out: str, outage: int) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": kafka.bootstrap_servers,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        super().__init__(
            consumer,
            make_producer(kafka),
            [topic_name("readings_raw", kafka.topic_prefix)],
            topic_name("dead_letters", kafka.topic_prefix),
            StageMetrics(registry := CollectorRegistry()),
            Polling(max_messages=500, timeout_s=0.2, linger_s=0.5, max_backoff_s=0.2),
        )
        self.registry = registry
        self.out = out
        self.outage = outage
        self.writes: list[list[int]] = []

    def prepare(self, msg: Message) -> int:
        return int((msg.value() or b"").decode("ascii"))

    def write(self, items: Sequence[Prepared[int]]) -> None:
        numbers = [item.item for item in items]
        self.writes.append(numbers)
        if self.outage:
            self.outage -= 1
            raise Flaky("the service is away")
        if 13 in numbers:
            raise ValueError("13 cannot be written")
        for n in numbers:
            self.produce(self.out, str(2 * n).encode())


def test_the_loop_dead_letters_the_one_record_and_retries_an_outage(
    kafka: KafkaSettings, group_id: str
) -> None:
    raw = topic_name("readings_raw", kafka.topic_prefix)
    out = topic_name("readings", kafka.topic_prefix)
    sent = [b"1", b"2", b"x3", b"4", b"13", b"5", b"6"]
    producer = make_producer(kafka)
    for value in sent:
        producer.produce(raw, value, partition=0)
    assert producer.flush(10) == 0

    stage = Numbers(kafka, group_id, out, outage=2)
    stop = threading.Event()
    thread = threading.Thread(target=stage.run, args=(stop,), daemon=True)
    thread.start()
    try:
        doubles = read_topic(kafka, out, until=lambda m: len(m) >= 5)
        dead = read_topic(
            kafka, topic_name("dead_letters", kafka.topic_prefix), until=lambda m: len(m) >= 2
        )
        assert sorted(int(m.value() or b"0") for m in doubles) == [2, 4, 8, 10, 12]
        by_offset = {int(headers_of(m)[H.ORIGIN_OFFSET]): m for m in dead}
        assert sorted(by_offset) == [2, 4]
        assert headers_of(by_offset[2])[H.ERROR] == b"ValueError"
        assert by_offset[2].value() == b"x3"
        assert by_offset[4].value() == b"13"
        assert b"13 cannot be written" in headers_of(by_offset[4])[H.DETAIL]
        assert all(headers_of(m)[H.REASON] == b"internal_error" for m in dead)
        # The outage: retried with the partitions paused, never a dead letter; the first
        # two writes saw the same batch.
        assert stage.writes[0] == stage.writes[1] == stage.writes[2]
        labels = {"stage": "ingest"}
        assert (
            stage.registry.get_sample_value("iotmon_stage_infrastructure_failures_total", labels)
            == 2
        )
        assert stage.registry.get_sample_value("iotmon_stage_poison_total", labels) == 2
        assert stage.registry.get_sample_value("iotmon_stage_paused", labels) == 0
        # Offsets move past every record, the poison ones included.
        stage_group = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group_id})
        try:

            def committed() -> int:
                got = stage_group.committed([TopicPartition(raw, 0)], timeout=10)
                return int(got[0].offset)

            wait_for(lambda: committed() == len(sent), what="offsets past every record")
        finally:
            stage_group.close()
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(30)
        stage.consumer.close()
