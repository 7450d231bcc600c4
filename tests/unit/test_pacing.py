"""Pacing of running hourly aggregates: the first change of a sensor-hour at once, later
ones at most every ``every_s``, the newest held one when due, never after its final."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stream_apps.processing.engine import (
    Changed,
    HourKey,
    OpenHour,
    PartitionState,
    SensorState,
    apply_batch,
    apply_tick,
    running_aggregates,
)
from stream_apps.processing.pacing import RunningPacer
from tests.ground_truth import one_reading
from tests.unit.test_engine import START, context

pytestmark = pytest.mark.unit


class Plant:
    """One sensor's records through the real engine, a record at a time."""

    def __init__(self) -> None:
        self.partition, self.states = PartitionState(), dict[str, SensorState]()
        self.offset = 0

    def reading(self, capture: datetime, recorded: datetime | None = None) -> Changed:
        """A reading captured at ``capture``, recorded (in Kafka) at ``recorded``."""
        changed = Changed()
        at = recorded or capture
        out = apply_batch(
            self.partition, self.states, [one_reading(capture, at)], self.offset, at, context(at)
        )
        self.offset += 1
        changed.update(out)
        return changed

    def tick(self, at: datetime) -> Changed:
        changed = Changed()
        out = apply_tick(self.partition, self.states, at, self.offset, context(at))
        self.offset += 1
        changed.update(out)
        return changed


def counts(released: dict[HourKey, OpenHour], now: datetime) -> list[tuple[bool, int]]:
    return [
        (a.is_final, a.temperature.count)
        for a in running_aggregates(released, now)
        if a.temperature is not None
    ]


def test_first_change_at_once_later_ones_held_until_due_then_the_newest() -> None:
    plant, pacer = Plant(), RunningPacer(every_s=5)
    t = START + timedelta(minutes=1)
    first = plant.reading(t)
    assert counts(pacer.release(first.hours, first.finalized, now=100.0), t) == [(False, 1)]
    for i in range(1, 4):  # three more readings within the five seconds: all held
        c = plant.reading(t + timedelta(seconds=i))
        assert pacer.release(c.hours, c.finalized, now=100.0 + i) == {}
    assert pacer.held == 1
    # A batch without this sensor, before it is due: still held.
    assert pacer.release({}, set(), now=104.9) == {}
    # The first batch at or after the due time sends the newest snapshot: all four readings.
    assert counts(pacer.release({}, set(), now=105.0), t) == [(False, 4)]
    assert pacer.held == 0
    # The next change is again paced from that send.
    c = plant.reading(t + timedelta(seconds=6))
    assert pacer.release(c.hours, c.finalized, now=106.0) == {}
    assert counts(pacer.release({}, set(), now=110.0), t) == [(False, 5)]


def test_a_change_after_the_interval_goes_out_at_once() -> None:
    plant, pacer = Plant(), RunningPacer(every_s=5)
    t = START + timedelta(minutes=1)
    c = plant.reading(t)
    pacer.release(c.hours, c.finalized, now=0.0)
    c = plant.reading(t + timedelta(seconds=7))
    assert counts(pacer.release(c.hours, c.finalized, now=7.0), t) == [(False, 2)]


# Readings of the 10:00 hour recorded 30 minutes late, at 11:20: that hour closes (end and
# ten minutes' grace) by the idle clock of the first tick 30 s after the data stopped.
RECORDED = datetime(2026, 11, 26, 11, 20, tzinfo=UTC)
HOUR = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def late_reading(plant: Plant, recorded: datetime) -> Changed:
    return plant.reading(recorded - timedelta(minutes=30), recorded)


def test_an_hour_finalized_while_held_goes_out_only_as_its_final() -> None:
    plant, pacer = Plant(), RunningPacer(every_s=5)
    c = late_reading(plant, RECORDED)
    pacer.release(c.hours, c.finalized, now=0.0)
    c = late_reading(plant, RECORDED + timedelta(seconds=1))
    assert pacer.release(c.hours, c.finalized, now=1.0) == {}
    # The partition goes idle: a tick closes the hour by the idle clock and sends its final.
    tick = plant.tick(RECORDED + timedelta(seconds=75))
    assert tick.finalized == {("TEMPIOT-A011", HOUR)}
    assert pacer.release(tick.hours, tick.finalized, now=2.0) == {}
    assert pacer.release({}, set(), now=60.0) == {}  # the held running one never goes out
    assert pacer.held == 0


def test_a_revised_final_is_never_held() -> None:
    """Readings for an hour the idle clock closed make a newer final: it goes out at once,
    however recently the hour went out before."""
    plant, pacer = Plant(), RunningPacer(every_s=5)
    c = late_reading(plant, RECORDED)
    pacer.release(c.hours, c.finalized, now=0.0)
    tick = plant.tick(RECORDED + timedelta(seconds=75))
    pacer.release(tick.hours, tick.finalized, now=0.5)
    late = late_reading(plant, RECORDED + timedelta(seconds=76))
    assert counts(pacer.release(late.hours, late.finalized, now=1.0), HOUR) == [(True, 2)]


def test_zero_interval_sends_every_change() -> None:
    plant, pacer = Plant(), RunningPacer(every_s=0)
    t = START + timedelta(minutes=1)
    for i in range(3):
        c = plant.reading(t + timedelta(seconds=i))
        assert counts(pacer.release(c.hours, c.finalized, now=float(i)), t) == [(False, i + 1)]
    assert pacer.held == 0


def test_held_snapshots_of_sensors_no_longer_owned_are_forgotten() -> None:
    plant, pacer = Plant(), RunningPacer(every_s=5)
    t = START + timedelta(minutes=1)
    for i in range(2):
        c = plant.reading(t + timedelta(seconds=i))
        pacer.release(c.hours, c.finalized, now=float(i))
    assert pacer.held == 1
    pacer.forget(lambda sensor_id: sensor_id != "TEMPIOT-A011")
    assert pacer.held == 0
    assert pacer.release({}, set(), now=60.0) == {}
    # Owned again later (the partition came back): its first change goes out at once.
    c = plant.reading(t + timedelta(seconds=3))
    assert counts(pacer.release(c.hours, c.finalized, now=61.0), t) == [(False, 3)]


def test_one_key_held_again_keeps_its_due_time() -> None:
    """Several held changes of one sensor-hour do not push its send further out."""
    plant, pacer = Plant(), RunningPacer(every_s=5)
    t = START + timedelta(minutes=1)
    c = plant.reading(t)
    pacer.release(c.hours, c.finalized, now=0.0)
    for i in range(1, 5):
        c = plant.reading(t + timedelta(seconds=i))
        pacer.release(c.hours, c.finalized, now=float(i))
    assert counts(pacer.release({}, set(), now=5.0), t) == [(False, 5)]
