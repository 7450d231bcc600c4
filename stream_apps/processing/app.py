"""The Faust application of the stream processing (`iotmon worker`).

Thin adapter around :mod:`stream_apps.processing.engine`: per record of the readings topic
it loads the states of the sensors involved from changelog-backed tables, applies the record,
stores what changed and sends the outputs.  Faust's windowed tables and ``on_window_close``
are deliberately not used: they expire by wall clock, lose expiries across restarts and
count replayed events twice.  Instead the hours live in plain table values, and a leader
timer of each worker writes a clock tick into the partitions it owns, so closing happens in
partition order.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
from confluent_kafka import Consumer, TopicPartition
from faust.types import TP
from prometheus_client import CollectorRegistry, Counter

from iotmon.runtime import settle_heap
from iotmon.settings import Settings
from schemas.aggregates import HourlyAggregate
from schemas.readings import ReadingBatch
from schemas.topics import TopicId, topic_name
from stream_apps.common.directory import SensorDirectory, ThresholdDirectory
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
from stream_apps.processing.pacing import RunningPacer
from stream_apps.processing.rules import ThresholdIndex
from stream_apps.processing.state_store import StateStore
from stream_apps.processing.transport import install as install_transport
from stream_apps.processing.windows import WindowPolicy

log = logging.getLogger(__name__)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "iotmon_worker_records_total", "Records processed", ["kind"], registry=registry
        )
        self.readings = Counter(
            "iotmon_worker_readings_total", "Readings applied", registry=registry
        )
        self.late = Counter(
            "iotmon_worker_late_total", "Readings after their hour closed", registry=registry
        )
        self.finals = Counter(
            "iotmon_worker_final_aggregates_total",
            "Final hourly aggregates emitted",
            registry=registry,
        )
        self.alert_events = Counter(
            "iotmon_worker_alert_events_total",
            "Alert events emitted",
            ["transition"],
            registry=registry,
        )
        self.gaps = Counter(
            "iotmon_worker_state_gaps_total",
            "Records found missing from the restored state",
            registry=registry,
        )
        self.revoked = Counter(
            "iotmon_worker_revoked_skipped_total",
            "Records skipped because their partition was revoked before they were applied",
            registry=registry,
        )
        self.replayed = Counter(
            "iotmon_worker_replayed_total",
            "Sensor updates skipped because already applied",
            registry=registry,
        )
        self.chunks_missing = Counter(
            "iotmon_worker_seen_chunks_missing_total",
            "Sealed chunks of capture instants looked up and not found",
            registry=registry,
        )


@dataclass
class Views:
    sensors: SensorDirectory
    thresholds: ThresholdDirectory
    index: ThresholdIndex
    index_version: int = -1

    def refresh(self) -> None:
        self.sensors.refresh()
        self.thresholds.refresh()
        if self.thresholds.version != self.index_version:
            self.index = ThresholdIndex(self.thresholds.thresholds())
            self.index_version = self.thresholds.version


def create_app(
    settings: Settings, registry: CollectorRegistry | None = None, *, settle: bool = False
) -> faust.App:
    """The Faust app with its topics, tables, agent and tick timer (no I/O until started).
    ``settle``: the process runs only this app, so settle its heap once the first batch of
    records loaded the master data and thresholds (:func:`iotmon.runtime.settle_heap`)."""
    w = settings.worker
    kafka = settings.kafka
    partitions = kafka.default_partitions
    metrics = WorkerMetrics(registry or CollectorRegistry())
    app = faust.App(
        f"{kafka.topic_prefix}{w.app_id}",
        broker=f"kafka://{kafka.bootstrap_servers}",
        store="memory://",
        web_port=w.web_port,
        web_enabled=False,
        topic_partitions=partitions,
        topic_replication_factor=kafka.replication_factor,
        broker_session_timeout=w.session_timeout_s,
        broker_heartbeat_interval=w.heartbeat_s,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        producer_acks=-1,
        # No standby replicas: promoting a standby to active was seen to skip changelog
        # records (state rolled back while offsets were committed); without standbys a new
        # owner restores the changelog from its start.
        table_standby_replicas=0,
        table_key_serializer="raw",
        table_value_serializer="raw",
        # Outputs go out as one record batch per topic partition and input record
        # (stream_apps/processing/batches.py); below the brokers' 1 MB message limit.
        producer_max_batch_size=512 * 1024,
        datadir=str(settings.stack.state_dir / "worker" / f"{kafka.topic_prefix}{w.app_id}"),
    )
    install_transport(app, w.fetch_max_wait_ms)
    raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    readings = app.topic(topic_name("readings", kafka.topic_prefix), partitions=partitions, **raw)
    out_ids: tuple[TopicId, ...] = ("aggregates_hourly", "alerts", "latest", "readings_late")
    out_names = {name: topic_name(name, kafka.topic_prefix) for name in out_ids}
    # Values are our own JSON (pydantic), stored as bytes.
    sensor_table = app.Table(
        "sensor-state", partitions=partitions, key_type=bytes, value_type=bytes
    )
    partition_table = app.Table(
        "partition-state", partitions=partitions, key_type=bytes, value_type=bytes
    )
    # Sealed chunks of each open hour's capture instants (engine.SeenChunk), written once
    # each, so that a sensor's state written per record stays small.
    chunk_table = app.Table("sensor-seen", partitions=partitions, key_type=bytes, value_type=bytes)
    readings_name = topic_name("readings", kafka.topic_prefix)
    policy = WindowPolicy(grace=timedelta(seconds=w.grace_s), timezone=w.timezone)
    views: list[Views] = []

    def load_views() -> Views:
        if not views:
            sensors, thresholds = SensorDirectory(kafka), ThresholdDirectory(kafka)
            sensors.load()
            thresholds.load()  # never evaluate before the thresholds are known
            views.append(
                Views(
                    sensors, thresholds, ThresholdIndex(thresholds.thresholds()), thresholds.version
                )
            )
        return views[0]

    senders: list[BatchSender] = []

    def sender() -> BatchSender:
        if not senders:  # Faust's own producer, so that its flush before a commit covers us
            senders.append(BatchSender(app.producer._ensure_producer()))  # type: ignore[attr-defined]
        return senders[0]

    def add(name: TopicId, key: str, value: bytes) -> None:
        sender().add(out_names[name], partition_for(key, partitions), key.encode(), value)

    def send_aggregate(agg: HourlyAggregate) -> None:
        if agg.is_final:
            metrics.finals.inc()
        add("aggregates_hourly", agg.sensor_id, agg.model_dump_json().encode())

    # Running hours and latest statuses changed by the records of the batch so far: sent
    # once per key by write().
    changed = Changed()

    def queue(outputs: Outputs, partition: int) -> None:
        for chunk in outputs.chunks:
            if chunk.ms is None:
                states_store.delete(chunk_table, partition, chunk.key)
            else:
                states_store.put(chunk_table, partition, chunk.key, chunk)
        for agg in outputs.aggregates:
            send_aggregate(agg)
        changed.update(outputs)
        for event in outputs.alerts:
            metrics.alert_events.labels(event.transition.value).inc()
            add("alerts", event.sensor_id, event.model_dump_json().encode())
        if outputs.late:
            metrics.late.inc(len(outputs.late))
            sender().add(
                out_names["readings_late"],
                partition,
                None,
                ReadingBatch(readings=outputs.late).model_dump_json().encode(),
            )

    states_store = StateStore()

    def seen_chunk(sensor_id: str, hour_start: datetime, index: int) -> frozenset[int]:
        chunk = states_store.get(chunk_table, chunk_key(sensor_id, hour_start, index), SeenChunk)
        if chunk is None or chunk.ms is None:
            # Only a lost changelog record can cause this; the reading then counts as new.
            metrics.chunks_missing.inc()
            log.warning(
                "sensor %s, hour %s: chunk %d of its capture instants not found",
                sensor_id,
                hour_start.isoformat(),
                index,
            )
            return frozenset()
        return chunk.ms

    def load(partition: int, batch: ReadingBatch) -> tuple[PartitionState, dict[str, SensorState]]:
        """The partition state and the stored states of the sensors ``batch`` involves."""
        pstate = states_store.get(partition_table, str(partition).encode(), PartitionState)
        if pstate is None:
            pstate = PartitionState()
        sensors = set(pstate.sensors) if batch.tick_at else {r.sensor_id for r in batch.readings}
        states: dict[str, SensorState] = {}
        for sid in sensors:
            state = states_store.get(sensor_table, sid.encode(), SensorState)
            if state is not None:
                states[sid] = state
        return pstate, states

    def stale_from(
        pstate: PartitionState, states: dict[str, SensorState], batch: ReadingBatch, offset: int
    ) -> int | None:
        """The first offset whose effect is missing from the restored state, if any.

        Faust restores tables from their changelogs after a rebalance, and was seen to come
        back with state older than the committed offsets (records acknowledged, their
        updates gone).  The partition state records the last offset applied to it and to
        each sensor, so such a loss shows as a gap, and the missing records are re-read from
        Kafka and applied again (per-sensor offsets make that idempotent).
        """
        candidates = []
        if offset > pstate.last_offset + 1 and pstate.last_offset >= 0:
            candidates.append(pstate.last_offset + 1)
        involved = pstate.sensors if batch.tick_at else {r.sensor_id for r in batch.readings}
        for sid in involved:
            state = states.get(sid)
            have = state.last_offset if state else -1
            if have < pstate.sensor_offsets.get(sid, -1):
                candidates.append(have + 1)
        return min(candidates) if candidates else None

    def apply_loaded(
        partition: int,
        offset: int,
        timestamp: float,
        batch: ReadingBatch,
        pstate: PartitionState,
        states: dict[str, SensorState],
    ) -> None:
        """Apply one record to the loaded states; the changed states and the outputs are
        queued, and written by :func:`write` after the whole batch of records."""
        v = load_views()  # refreshed once per batch of records, in process()

        def location(sid: str, v: Views = v) -> Any:
            record = v.sensors.get(sid)
            return record.location if record else None

        ctx = Context(
            policy=policy,
            thresholds=v.index,
            location=location,
            silent_after=timedelta(seconds=w.silent_after_s),
            idle_after=timedelta(seconds=w.idle_close_s),
            outbox_keep=timedelta(seconds=w.outbox_keep_s),
            now=datetime.now(UTC),
            replay_from=committed(partition),
            seen_chunk=seen_chunk,
        )
        if batch.tick_at is not None:
            metrics.records.labels("tick").inc()
            outputs = apply_tick(pstate, states, batch.tick_at, offset, ctx)
        else:
            metrics.records.labels("readings").inc()
            metrics.readings.inc(len(batch.readings))
            record_time = datetime.fromtimestamp(timestamp, UTC)
            outputs = apply_batch(pstate, states, batch.readings, offset, record_time, ctx)
        for sid, state in states.items():
            if state.last_offset == offset:
                states_store.put(sensor_table, partition, sid.encode(), state)
                pstate.sensor_offsets[sid] = offset
            elif batch.tick_at is None:
                metrics.replayed.inc()
        pstate.last_offset = max(pstate.last_offset, offset)
        states_store.put(partition_table, partition, str(partition).encode(), pstate)
        queue(outputs, partition)

    pacer = RunningPacer(w.running_every_s)

    async def write() -> None:
        """The changed states (changelog) and the outputs of the records applied so far, as
        one record batch per topic partition."""
        now = datetime.now(UTC)
        due = pacer.release(changed.hours, changed.finalized, time.monotonic())
        for agg in running_aggregates(due, now):
            send_aggregate(agg)
        for status in changed.statuses(now):
            add("latest", status.sensor_id, status.model_dump_json().encode())
        changed.clear()
        states_store.write(sender())
        await sender().send()

    def apply_record(partition: int, offset: int, timestamp: float, value: bytes) -> None:
        batch = ReadingBatch.model_validate_json(value)
        pstate, states = load(partition, batch)
        start = stale_from(pstate, states, batch, offset)
        if start is not None and start < offset:
            missing = read_range(partition, start, offset)
            metrics.gaps.inc()
            log.warning(
                "partition %d: state restored older than offset %d; re-applying"
                " %d records from offset %d",
                partition,
                offset,
                len(missing),
                start,
            )
            for old_offset, old_timestamp, old_value in missing:
                old = ReadingBatch.model_validate_json(old_value)
                apply_loaded(partition, old_offset, old_timestamp, old, *load(partition, old))
            pstate, states = load(partition, batch)
        apply_loaded(partition, offset, timestamp, batch, pstate, states)

    def committed(partition: int) -> int | None:
        """The offset this worker last committed for a readings partition (Faust's monitor
        records every commit); None before its first commit."""
        offset = app.monitor.tp_committed_offsets.get(TP(readings_name, partition))
        return None if offset is None else int(offset)

    def read_range(partition: int, start: int, end: int) -> list[tuple[int, float, bytes]]:
        """Records ``start`` .. ``end - 1`` of a readings partition, straight from Kafka."""
        consumer = Consumer(
            {
                "bootstrap.servers": kafka.bootstrap_servers,
                "group.id": f"{app.conf.id}-repair",
                "enable.auto.commit": False,
            }
        )
        try:
            consumer.assign([TopicPartition(readings_name, partition, start)])
            out: list[tuple[int, float, bytes]] = []
            deadline = time.monotonic() + 60
            while (not out or out[-1][0] < end - 1) and time.monotonic() < deadline:
                for m in consumer.consume(500, 1.0):
                    if m.error() is None and (m.offset() or 0) < end and m.value() is not None:
                        out.append((m.offset() or 0, (m.timestamp()[1]) / 1000, m.value() or b""))
            return out
        finally:
            consumer.close()

    owned_before: set[int] = set()

    def owns(sensor_id: str) -> bool:
        return partition_for(sensor_id, partitions) in owned_before

    settled: list[bool] = []

    @app.agent(readings, name="process-readings")
    async def process(stream: faust.StreamT[bytes]) -> None:
        # Up to batch_max_records records at a time, waiting at most batch_wait_s for them
        # (Faust acknowledges them only after this loop's body): the per-record costs
        # (a state written back, a record batch per output topic) are paid once per batch.
        take = stream.take_events  # type: ignore[attr-defined]  # not in StreamT's stubs
        async for events in take(w.batch_max_records, w.batch_wait_s):
            # Records of a partition revoked while they waited in the batch are skipped: the
            # tables no longer hold that partition's states here, so applying them would
            # write states built from nothing, and the new owner reads them again anyway.
            owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == readings_name}
            if owned != owned_before:  # a rebalance: held snapshots of others' sensors go
                owned_before.clear()
                owned_before.update(owned)
                pacer.forget(owns)
            load_views().refresh()  # master data and thresholds changed since the last batch
            if settle and not settled:
                settle_heap()
                settled.append(True)
            try:
                for event in events:
                    msg = event.message
                    if msg.partition not in owned:
                        metrics.revoked.inc()
                        continue
                    apply_record(msg.partition, msg.offset, msg.timestamp, event.value)
                await write()
            except BaseException:
                states_store.drop()  # cached states may be half updated
                changed.clear()
                pacer.clear()
                raise
            # No flush here: the batches are with the producer, which sends them at once
            # (no linger), and Faust flushes it before it commits offsets.  A flush in this
            # loop waited for the broker's acknowledgements and held up the next batch.

    # Every worker ticks the partitions it owns (not "the leader" ticks all: Faust's leader
    # election could leave no worker ticking after a rebalance). Two workers that briefly
    # both believe they own a partition tick it twice, which is harmless.  The partitions
    # take turns, one every TICK_INTERVAL_S / partitions: a tick visits every sensor of its
    # partition, and the ticks of all partitions at once held up the readings behind them
    # for 65-140 ms every TICK_INTERVAL_S (2,000 sensors).
    turns = itertools.count()

    @app.timer(w.tick_interval_s / partitions)  # type: ignore[untyped-decorator]
    async def tick() -> None:
        partition = next(turns) % partitions
        if any(
            tp.topic == readings_name and tp.partition == partition
            for tp in app.assignor.assigned_actives()
        ):
            value = ReadingBatch(tick_at=datetime.now(UTC)).model_dump_json().encode()
            await readings.send(value=value, partition=partition)

    return app
