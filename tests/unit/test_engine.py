"""The processing engine without a broker: ground truth, duplicates, replay after a crash."""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from schemas.aggregates import HourlyAggregate
from schemas.master import Location
from schemas.readings import Reading
from schemas.thresholds import Threshold
from stream_apps.processing.engine import (
    Changed,
    Context,
    PartitionState,
    SeenChunk,
    SensorState,
    apply_batch,
    apply_tick,
    chunk_key,
)
from stream_apps.processing.rules import ThresholdIndex
from stream_apps.processing.windows import SEAL_AT, WindowPolicy, average
from tests.ground_truth import expected_hourly, make_readings, one_reading

pytestmark = pytest.mark.unit

START = datetime(2025, 8, 1, 0, 0, tzinfo=UTC)  # 09:00 KST
END = START + timedelta(hours=4)


class ChunkStore:
    """The chunk table, as a dict: what the outputs store and delete, looked up by the
    engine.  A lookup of a chunk that is not there fails the test."""

    def __init__(self) -> None:
        self.chunks: dict[bytes, frozenset[int]] = {}
        self.lookups = 0

    def apply(self, chunks: list[SeenChunk]) -> None:
        for chunk in chunks:
            if chunk.ms is None:
                self.chunks.pop(chunk.key, None)
            else:
                self.chunks[chunk.key] = chunk.ms

    def lookup(self, sensor_id: str, hour_start: datetime, index: int) -> frozenset[int]:
        self.lookups += 1
        return self.chunks[chunk_key(sensor_id, hour_start, index)]


def context(
    now: datetime, thresholds: list[Threshold] | None = None, store: ChunkStore | None = None
) -> Context:
    return Context(
        policy=WindowPolicy(grace=timedelta(minutes=10)),
        thresholds=ThresholdIndex(thresholds or []),
        location=lambda sid: Location(loc_id=sid[-4:], factory="SinPyeong"),
        silent_after=timedelta(minutes=5),
        idle_after=timedelta(seconds=30),
        outbox_keep=timedelta(minutes=10),
        now=now,
        seen_chunk=store.lookup if store is not None else None,
    )


def as_row(agg: HourlyAggregate) -> dict[str, object]:
    doc: dict[str, object] = {"count": agg.temperature.count if agg.temperature else 0}
    for metric in ("temperature", "humidity", "pcv_temperature"):
        m = getattr(agg, metric)
        doc[f"{metric}_max"] = str(m.max.quantize(Decimal("0.01")))
        doc[f"{metric}_min"] = str(m.min.quantize(Decimal("0.01")))
        doc[f"{metric}_avg"] = str(average(m))
    return doc


PCV_BANDS = [
    Threshold(
        threshold_id=1,
        threshold_type="pcv_temperature",
        level="yellow",
        min_value=Decimal("31"),
        max_value=Decimal("32.9"),
        hold_seconds=0,
        clear_seconds=60,
        upd_dt=START,
    ),
    Threshold(
        threshold_id=2,
        threshold_type="pcv_temperature",
        level="red",
        min_value=Decimal("33"),
        hold_seconds=120,
        clear_seconds=60,
        upd_dt=START,
    ),
]


def run(
    readings: list[Reading],
    batch: int = 50,
    crash_at: int | None = None,
    replay_from: int | None = None,
    store: ChunkStore | None = None,
    lose_chunks: bool = False,
    committed_lag: int | None = None,
):
    """Feed batches (offsets 0..), then a tick after the data; optionally 'crash' after batch
    ``crash_at``: restore the states saved at batch ``replay_from`` for half of the sensors
    (the changelog had their updates) and the older ones for the rest, then replay.
    ``lose_chunks``: the crash also loses the chunks stored since ``replay_from``.
    ``committed_lag``: the committed offset runs that many records behind (outboxes pruned
    by it, as in the worker)."""
    store = store or ChunkStore()
    partition = PartitionState()
    states: dict[str, SensorState] = {}
    finals: dict[tuple[str, str, str], HourlyAggregate] = {}
    late: list[Reading] = []
    alerts = []
    snapshots: dict[int, tuple[PartitionState, dict[str, SensorState]]] = {}
    batches = [readings[i : i + batch] for i in range(0, len(readings), batch)]
    offset = 0
    while offset < len(batches):
        if offset == replay_from and crash_at is not None:
            snapshots[offset] = (copy.deepcopy(partition), copy.deepcopy(states))
            stored = dict(store.chunks)
        rt = batches[offset][-1].capture_dt + timedelta(seconds=5)
        ctx = context(rt, PCV_BANDS, store)
        if committed_lag is not None:
            ctx = dataclasses.replace(ctx, replay_from=max(0, offset - committed_lag))
        out = apply_batch(partition, states, batches[offset], offset, rt, ctx)
        store.apply(out.chunks)
        late += out.late
        alerts += out.alerts
        if crash_at is not None and offset == crash_at and replay_from is not None:
            # crash: the changelog holds the newest states of some sensors only
            old_p, old_states = snapshots[replay_from]
            mixed = {
                sid: (st if int(sid[-3:]) % 2 else old_states.get(sid, st))
                for sid, st in states.items()
            }
            partition, states = copy.deepcopy(old_p), copy.deepcopy(mixed)
            if lose_chunks:
                store.chunks = stored
            offset, crash_at = replay_from, None
            continue
        offset += 1
    tick = END + timedelta(hours=1)
    out = apply_tick(partition, states, tick, len(batches), context(tick, store=store))
    store.apply(out.chunks)
    for agg in out.aggregates:
        finals[(agg.sensor_id, agg.ymd, agg.hour)] = agg
    return finals, late, alerts, states


def test_final_hours_equal_the_ground_truth() -> None:
    readings = make_readings(12, 4, START, every_s=30, duplicates=0.1, shuffle_s=400)
    finals, late, alerts, states = run(readings)
    assert late == []
    assert alerts, "the data crosses the bands"
    assert {k: as_row(v) for k, v in finals.items()} == expected_hourly(readings)
    assert all(v.is_final for v in finals.values())
    # closed by the idle clock (no data after them): final, and still open to late data
    assert all(w.final_sent for s in states.values() for w in s.windows.values())


def test_replay_after_a_crash_changes_nothing() -> None:
    readings = make_readings(12, 4, START, every_s=30, duplicates=0.05, shuffle_s=400)
    expected = expected_hourly(readings)
    _, _, clean_alerts, clean_states = run(readings)
    finals, late, alerts, states = run(readings, crash_at=40, replay_from=25)
    assert late == []
    assert {k: as_row(v) for k, v in finals.items()} == expected
    # every alert event of the clean run was emitted (some twice: resent from the outbox),
    # and no other
    assert {e.event_id for e in alerts} == {e.event_id for e in clean_alerts}
    assert {k: v.alerts for k, v in states.items()} == {
        k: v.alerts for k, v in clean_states.items()
    }


def test_a_reading_after_its_hour_closed_is_late_and_kept() -> None:
    readings = make_readings(2, 2, START, every_s=60, duplicates=0, shuffle_s=1)
    partition, states = PartitionState(), dict[str, SensorState]()
    apply_batch(partition, states, readings, 0, END, context(END))
    closing = START + timedelta(hours=1, minutes=10)
    out = apply_batch(
        partition,
        states,
        [readings[-1].model_copy(update={"capture_dt": closing + timedelta(hours=2)})],
        1,
        END,
        context(END),
    )
    assert out.late == []
    stray = readings[0].model_copy(update={"capture_dt": START + timedelta(minutes=30, seconds=1)})
    out = apply_batch(partition, states, [stray], 2, END, context(END))
    assert out.late == [stray]


def test_idle_partition_closes_by_the_tick_clock_and_silent_sensors_alert() -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    reading = one_reading(now - timedelta(hours=2), now)
    partition, states = PartitionState(), dict[str, SensorState]()
    apply_batch(partition, states, [reading], 0, now, context(now))
    # not idle yet: the partition's event time has not passed the hour
    out = apply_tick(
        partition, states, now + timedelta(seconds=10), 1, context(now + timedelta(seconds=10))
    )
    assert out.aggregates == []
    later = now + timedelta(seconds=31)
    out = apply_tick(partition, states, later, 2, context(later))
    assert [a.is_final for a in out.aggregates] == [True]
    assert out.alerts == []
    silent = now + timedelta(minutes=6)
    out = apply_tick(partition, states, silent, 3, context(silent))
    assert [(a.kind.value, a.transition.value) for a in out.alerts] == [("sensor_silent", "raised")]
    back = reading.model_copy(update={"capture_dt": silent})
    out = apply_batch(partition, states, [back], 4, silent, context(silent))
    assert [(a.kind.value, a.transition.value) for a in out.alerts] == [
        ("sensor_silent", "resolved")
    ]


def test_a_final_of_the_idle_clock_is_revised_by_data_that_arrives_after_it() -> None:
    """A backlog 30 min behind the clock pauses for 75 s (Kafka was down; the worker's ticks
    of that time reach the partition first): the idle clock finalizes the open hour, and the
    readings that follow are counted into a newer final instead of dropped as late.  The
    data's own watermark then closes the hour for good."""
    now = datetime(2026, 11, 26, 11, 20, tzinfo=UTC)

    def reading(recorded: datetime) -> Reading:
        return one_reading(recorded - timedelta(minutes=30), recorded)

    partition, states = PartitionState(), dict[str, SensorState]()
    apply_batch(partition, states, [reading(now)], 0, now, context(now))
    pause = now + timedelta(seconds=75)
    out = apply_tick(partition, states, pause, 1, context(pause))
    assert [(a.is_final, a.temperature.count) for a in out.aggregates if a.temperature] == [
        (True, 1)
    ]
    out = apply_batch(partition, states, [reading(pause)], 2, pause, context(pause))
    assert out.late == [] and out.aggregates == []
    revised = out.changed.aggregates(pause)
    assert [(a.is_final, a.temperature.count) for a in revised if a.temperature] == [(True, 2)]
    later = pause + timedelta(seconds=5)
    assert apply_tick(partition, states, later, 3, context(later)).aggregates == []
    # the data reaches 11:10:01 (+ grace past 10:00-11:00): closed for good
    end = datetime(2026, 11, 26, 11, 40, 1, tzinfo=UTC)
    apply_batch(partition, states, [reading(end)], 4, end, context(end))
    out = apply_tick(partition, states, end, 5, context(end))
    assert [(a.hour_start.hour, a.is_final) for a in out.aggregates] == [(10, True)]
    state = states["TEMPIOT-A011"]
    assert list(state.windows) == [datetime(2026, 11, 26, 11, tzinfo=UTC)]
    assert state.closed_through == datetime(2026, 11, 26, 10, tzinfo=UTC)
    late = apply_batch(partition, states, [reading(now)], 6, end, context(end))
    assert len(late.late) == 1


def test_the_outbox_keeps_only_what_a_replay_can_ask_for() -> None:
    """Entries of records before the committed offset are dropped (no replay reaches them);
    without a known committed offset everything within ``outbox_keep`` stays."""
    readings = make_readings(12, 2, START, every_s=30)
    batches = [readings[i : i + 20] for i in range(0, len(readings), 20)]

    def feed(committed_lag: int | None) -> dict[str, SensorState]:
        partition = PartitionState()
        states: dict[str, SensorState] = {}
        for offset, batch in enumerate(batches):
            rt = batch[-1].capture_dt + timedelta(seconds=5)
            ctx = context(rt, PCV_BANDS)
            if committed_lag is not None:
                ctx = dataclasses.replace(ctx, replay_from=max(0, offset - committed_lag))
            apply_batch(partition, states, batch, offset, rt, ctx)
        return states

    kept_all = feed(None)
    pruned = feed(3)
    assert sum(len(s.outbox) for s in kept_all.values()) > 50
    for sid, state in pruned.items():
        # pruned when the sensor was last updated, with the committed offset of that time
        committed = state.last_offset - 3
        assert all(e.offset >= committed for e in state.outbox)
        # what a replay from the committed offset asks for is still there
        assert [e for e in kept_all[sid].outbox if e.offset >= committed] == state.outbox
    assert sum(len(s.outbox) for s in pruned.values()) < sum(
        len(s.outbox) for s in kept_all.values()
    )


def test_changes_of_a_batch_of_records_go_out_once_per_key() -> None:
    """Three records touch the same sensors: one running aggregate per sensor-hour and one
    latest status per sensor, as of the last record.  An hour that a tick closed for good
    in the meantime is left to its final."""
    readings = make_readings(3, 2, START, every_s=60, duplicates=0, shuffle_s=1)
    partition, states = PartitionState(), dict[str, SensorState]()
    changed = Changed()
    size = len(readings) // 3 + 1
    thirds = [readings[i : i + size] for i in range(0, len(readings), size)]
    for offset, part in enumerate(thirds):
        rt = max(r.capture_dt for r in part)
        out = apply_batch(partition, states, part, offset, rt, context(rt))
        assert out.late == []
        changed.update(out)
    aggregates = changed.aggregates(END)
    keys = [(a.sensor_id, a.hour_start) for a in aggregates]
    assert len(keys) == len(set(keys)) == 3 * 2
    per_key = {(a.sensor_id, a.ymd, a.hour): as_row(a) for a in aggregates}
    assert per_key == expected_hourly(readings)
    statuses = changed.statuses(END)
    assert sorted(s.sensor_id for s in statuses) == sorted(states)
    for status in statuses:
        assert status.capture_dt == max(
            r.capture_dt for r in readings if r.sensor_id == status.sensor_id
        )
    # A tick closes the first hour for good: only the second is still built from here.
    tick = START + timedelta(hours=2, minutes=11)
    later = tick + timedelta(seconds=1)
    apply_batch(
        partition,
        states,
        [readings[-1].model_copy(update={"capture_dt": tick})],
        3,
        later,
        context(later),
    )
    out = apply_tick(partition, states, later, 4, context(later))
    assert {a.hour_start for a in out.aggregates} == {START, START + timedelta(hours=1)}
    assert changed.aggregates(later) == []


def test_an_hour_finalized_later_in_the_batch_goes_out_once() -> None:
    """Readings of an hour, then a tick that closes it by the idle clock, in one batch of
    records: the tick's final is the only message for that hour.  Readings after it in the
    same batch make the running message a newer final again."""
    now = datetime(2026, 11, 26, 11, 20, tzinfo=UTC)

    def reading(recorded: datetime) -> Reading:
        return one_reading(recorded - timedelta(minutes=30), recorded)

    partition, states = PartitionState(), dict[str, SensorState]()
    changed = Changed()
    changed.update(apply_batch(partition, states, [reading(now)], 0, now, context(now)))
    pause = now + timedelta(seconds=75)
    tick = apply_tick(partition, states, pause, 1, context(pause))
    assert [(a.is_final, a.temperature.count) for a in tick.aggregates if a.temperature] == [
        (True, 1)
    ]
    changed.update(tick)
    assert changed.aggregates(pause) == []
    changed.update(apply_batch(partition, states, [reading(pause)], 2, pause, context(pause)))
    revised = changed.aggregates(pause)
    assert [(a.is_final, a.temperature.count) for a in revised if a.temperature] == [(True, 2)]


def test_an_hour_of_fast_readings_keeps_the_state_small_and_the_counts_exact() -> None:
    """One reading every 2 s (1,800 an hour) per sensor, shuffled over 280 s, 10% of them
    delivered twice: the capture instants go to sealed chunks, the duplicates among them
    are found there, and a sensor's state stays a few KB where all its instants made 14 KB
    an hour."""
    readings = make_readings(4, 3, START, every_s=2, duplicates=0.1, shuffle_s=280)
    store = ChunkStore()
    sizes: list[int] = []
    partition = PartitionState()
    states: dict[str, SensorState] = {}
    batches = [readings[i : i + 40] for i in range(0, len(readings), 40)]
    for offset, batch in enumerate(batches):
        rt = batch[-1].capture_dt + timedelta(seconds=5)
        ctx = dataclasses.replace(context(rt, PCV_BANDS, store), replay_from=offset)
        out = apply_batch(partition, states, batch, offset, rt, ctx)
        store.apply(out.chunks)
        sizes.extend(len(s.model_dump_json()) for s in states.values())
        assert all(len(w.seen_ms) < SEAL_AT for s in states.values() for w in s.windows.values())
    tick = END + timedelta(hours=1)
    out = apply_tick(partition, states, tick, len(batches), context(tick, store=store))
    finals = {(a.sensor_id, a.ymd, a.hour): a for a in out.aggregates}
    assert {k: as_row(v) for k, v in finals.items()} == expected_hourly(readings)
    assert store.lookups > 100, "duplicates and out-of-order readings inside sealed chunks"
    # Three hours are open at the end (no tick closed them), about 1 KB each, next to the
    # alert states and the outbox.  With every instant kept they alone made 3 x 14 KB.
    assert max(sizes) < 8_000, max(sizes)


def test_replay_with_sealed_chunks_after_a_crash_changes_nothing() -> None:
    """A crash with the states of half the sensors restored older, with and without the
    chunks stored since: re-applied records seal the same chunks again, and a replayed
    record re-sends the chunks it sealed from the outbox, so no lookup misses."""
    readings = make_readings(6, 4, START, every_s=5, duplicates=0.1, shuffle_s=280)
    expected = expected_hourly(readings)
    for lose_chunks in (False, True):
        store = ChunkStore()
        finals, late, _, _ = run(
            readings, crash_at=180, replay_from=120, store=store, lose_chunks=lose_chunks
        )
        assert late == []
        assert {k: as_row(v) for k, v in finals.items()} == expected
        assert store.lookups > 0


def test_the_chunks_of_a_closed_hour_are_deleted_after_outbox_keep() -> None:
    readings = make_readings(2, 1, START, every_s=2, duplicates=0.05, shuffle_s=60)
    store = ChunkStore()
    partition, states = PartitionState(), dict[str, SensorState]()
    rt = START + timedelta(hours=1)
    store.apply(apply_batch(partition, states, readings, 0, rt, context(rt, store=store)).chunks)
    sealed = len(store.chunks)
    assert sealed >= 2 * (1800 // SEAL_AT)
    # the data's watermark passes the hour's close: the hour is gone from the state, and
    # its chunks stay for a repair that re-applies records from before the close
    after = START + timedelta(hours=1, minutes=11)
    follow = [r.model_copy(update={"capture_dt": after}) for r in readings[:2]]
    store.apply(apply_batch(partition, states, follow, 1, after, context(after)).chunks)
    out = apply_tick(partition, states, after, 2, context(after, store=store))
    store.apply(out.chunks)
    assert len(store.chunks) == sealed
    assert all(START not in s.windows and s.retired for s in states.values())
    later = after + timedelta(minutes=10)
    out = apply_tick(partition, states, later, 3, context(later, store=store))
    store.apply(out.chunks)
    assert store.chunks == {}
    assert all(s.retired == [] for s in states.values())
    # a replay of that tick deletes them again (from the outbox)
    store.chunks = {b"x": frozenset()}
    replayed = apply_tick(partition, states, later, 3, context(later, store=store))
    assert {c.key for c in replayed.chunks} == {c.key for c in out.chunks}
    assert all(c.ms is None for c in replayed.chunks)
