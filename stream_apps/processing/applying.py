"""One record applied to the states it involves, and a batch's effects staged for writing.

:class:`Applier` loads the partition state and the states of the sensors a record involves
(:class:`~stream_apps.processing.state_store.StateStore`), calls the engine, and queues the
changed states and the outputs; :meth:`Applier.stage` puts them into the tables and on the
:class:`~stream_apps.processing.batches.BatchSender` once per batch of records.  Running
hours and latest statuses are merged over the batch (:class:`~.engine.Changed`) and built
once per key when staged; running aggregates are paced (:class:`~.pacing.RunningPacer`).
It handles no failure: :mod:`stream_apps.processing.processor` does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from iotmon.settings import WorkerSettings
from schemas.aggregates import HourlyAggregate
from schemas.alerts import with_location
from schemas.readings import ReadingBatch
from schemas.topics import TopicId, topic_name
from stream_apps.common.partitioning import partition_for
from stream_apps.processing.batches import BatchSender
from stream_apps.processing.engine import (
    Changed,
    Context,
    Outputs,
    PartitionState,
    SeenChunk,
    SensorState,
    apply_batch,
    apply_tick,
    chunk_key,
    running_aggregates,
)
from stream_apps.processing.metrics import WorkerMetrics
from stream_apps.processing.pacing import RunningPacer
from stream_apps.processing.state_store import StateStore, Table
from stream_apps.processing.views import Views
from stream_apps.processing.windows import WindowPolicy

log = logging.getLogger(__name__)

NOTHING = ReadingBatch()  # a record that involves no sensor


@dataclass(frozen=True)
class Tables:
    sensors: Table  # sensor id -> SensorState
    partitions: Table  # partition number -> PartitionState
    chunks: Table  # engine.chunk_key -> SeenChunk: sealed capture instants


class Applier:
    """Applies records to the worker's states and stages their effects (see the module)."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        topic_prefix: str,
        partitions: int,
        tables: Tables,
        sender: BatchSender,
        views: Views,
        metrics: WorkerMetrics,
        committed: Callable[[int], int | None],
    ) -> None:
        self.tables = tables
        self.sender = sender
        self.views = views
        self.metrics = metrics
        self.partitions = partitions
        self.store = StateStore()
        self.pacer = RunningPacer(settings.running_every_s)
        self.changed = Changed()  # by the records since the last stage()
        out_ids: tuple[TopicId, ...] = ("aggregates_hourly", "alerts", "latest", "readings_late")
        self.out_names = {name: topic_name(name, topic_prefix) for name in out_ids}
        self._policy = WindowPolicy(
            grace=timedelta(seconds=settings.grace_s), timezone=settings.timezone
        )
        self._silent_after = timedelta(seconds=settings.silent_after_s)
        self._idle_after = timedelta(seconds=settings.idle_close_s)
        self._outbox_keep = timedelta(seconds=settings.outbox_keep_s)
        self._committed = committed
        self._count = metrics  # what applying counts with: not while applying again
        self._uncounted = WorkerMetrics.uncounted()

    def load(
        self, partition: int, batch: ReadingBatch
    ) -> tuple[PartitionState, dict[str, SensorState]]:
        """The partition state and the stored states of the sensors ``batch`` involves."""
        store = self.store
        pstate = store.get(self.tables.partitions, str(partition).encode(), PartitionState)
        if pstate is None:
            pstate = PartitionState()
        sensors = set(pstate.sensors) if batch.tick_at else {r.sensor_id for r in batch.readings}
        states: dict[str, SensorState] = {}
        table = self.tables.sensors
        for sid in sensors:
            state = store.get(table, sid.encode(), SensorState)
            if state is not None:
                states[sid] = state
        return pstate, states

    def apply(
        self,
        partition: int,
        offset: int,
        timestamp: float,
        batch: ReadingBatch,
        pstate: PartitionState,
        states: dict[str, SensorState],
    ) -> None:
        """Apply one record to the loaded states (the engine changes them in place); the
        changed states and the outputs are queued, and staged by :meth:`stage`."""
        views = self.views
        ctx = Context(
            policy=self._policy,
            thresholds=views.index,
            location=views.location,
            silent_after=self._silent_after,
            idle_after=self._idle_after,
            outbox_keep=self._outbox_keep,
            now=datetime.now(UTC),
            replay_from=self._committed(partition),
            seen_chunk=self._seen_chunk,
        )
        count = self._count
        if batch.tick_at is not None:
            outputs = apply_tick(pstate, states, batch.tick_at, offset, ctx)
            count.records.labels("tick").inc()
        else:
            record_time = datetime.fromtimestamp(timestamp, UTC)
            outputs = apply_batch(pstate, states, batch.readings, offset, record_time, ctx)
            count.records.labels("readings").inc()
            count.readings.inc(len(batch.readings))
        store, table = self.store, self.tables.sensors
        for sid, state in states.items():
            if state.last_offset == offset:
                store.put(table, partition, sid.encode(), state)
                pstate.sensor_offsets[sid] = offset
            elif batch.tick_at is None:
                count.replayed.inc()
        pstate.last_offset = max(pstate.last_offset, offset)
        store.put(self.tables.partitions, partition, str(partition).encode(), pstate)
        self._queue(outputs, partition)

    def mark(self, partition: int, offset: int) -> None:
        """Record ``offset`` as handled in the partition state, with no other effect."""
        pstate, _ = self.load(partition, NOTHING)
        if offset > pstate.last_offset:
            pstate.last_offset = offset
            self.store.put(self.tables.partitions, partition, str(partition).encode(), pstate)

    def stage(self) -> None:
        """Store the changed states in their tables and hand their changelog records and
        the outputs to the sender.  If it raises, no table has changed and nothing more is
        queued (the pacer may have moved on; :meth:`drop` the rest)."""
        now = datetime.now(UTC)
        changed = self.changed
        due = self.pacer.release(changed.hours, changed.finalized, time.monotonic())
        for agg in running_aggregates(due, now):
            self._send_aggregate(agg)
        for status in changed.statuses(now):
            self._add("latest", status.sensor_id, status.model_dump_json().encode())
        changed.clear()
        self.store.write(self.sender)  # the first step that changes anything: the tables

    def drop(self, since: dict[tuple[str, int], int] | None = None) -> None:
        """Forget every effect not staged yet, and what was queued on the sender since
        ``since`` (a :meth:`BatchSender.mark`; None: since the last send)."""
        self.store.drop()
        self.changed.clear()
        if since is None:
            self.sender.discard()
        else:
            self.sender.rollback(since)

    @contextmanager
    def not_counting(self) -> Iterator[None]:
        """Apply records without counting them (they were counted when first applied)."""
        self._count = self._uncounted
        try:
            yield
        finally:
            self._count = self.metrics

    def _seen_chunk(self, sensor_id: str, hour_start: datetime, index: int) -> frozenset[int]:
        key = chunk_key(sensor_id, hour_start, index)
        chunk = self.store.get(self.tables.chunks, key, SeenChunk)
        if chunk is None or chunk.ms is None:
            # Only a lost changelog record can cause this; the reading then counts as new.
            self._count.chunks_missing.inc()
            log.warning(
                "sensor %s, hour %s: chunk %d of its capture instants not found",
                sensor_id,
                hour_start.isoformat(),
                index,
            )
            return frozenset()
        return chunk.ms

    def _queue(self, outputs: Outputs, partition: int) -> None:
        store, chunks = self.store, self.tables.chunks
        for chunk in outputs.chunks:
            if chunk.ms is None:
                store.delete(chunks, partition, chunk.key)
            else:
                store.put(chunks, partition, chunk.key, chunk)
        for agg in outputs.aggregates:
            self._send_aggregate(agg)
        self.changed.update(outputs)
        for event in outputs.alerts:
            self._count.alert_events.labels(event.transition.value).inc()
            located = with_location(event, self.views.location(event.sensor_id))
            self._add("alerts", event.sensor_id, located.model_dump_json().encode())
        if outputs.late:
            self._count.late.inc(len(outputs.late))
            self.sender.add(
                self.out_names["readings_late"],
                partition,
                None,
                ReadingBatch(readings=outputs.late).model_dump_json().encode(),
            )

    def _add(self, name: TopicId, key: str, value: bytes) -> None:
        self.sender.add(
            self.out_names[name], partition_for(key, self.partitions), key.encode(), value
        )

    def _send_aggregate(self, agg: HourlyAggregate) -> None:
        if agg.is_final:
            self._count.finals.inc()
        self._add("aggregates_hourly", agg.sensor_id, agg.model_dump_json().encode())
