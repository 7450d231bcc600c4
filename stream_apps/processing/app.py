"""The Faust application of the stream processing (`iotmon worker`).

Thin adapter around :mod:`stream_apps.processing.processor` (which calls the engine): per
batch of records of the readings topic it applies each record to the states of the sensors
involved, kept in changelog-backed tables, then writes the changed states and the outputs.
Faust's windowed tables and ``on_window_close`` are deliberately not used: they expire by
wall clock, lose expiries across restarts and count replayed events twice.  Instead the
hours live in plain table values, and a timer of each worker writes a clock tick into the
partitions it owns, so closing happens in partition order.

What goes around Faust's public API is in :mod:`stream_apps.processing.faust_glue`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial

import faust
from faust.types import EventT
from prometheus_client import CollectorRegistry

from iotmon.kafka_records import install_lenient_header_names
from iotmon.runtime import settle_heap
from iotmon.settings import Settings
from schemas.readings import ReadingBatch
from schemas.topics import topic_name
from stream_apps.common.partitioning import partition_for
from stream_apps.processing import faust_glue
from stream_apps.processing.applying import Applier, Tables
from stream_apps.processing.batches import BatchSender
from stream_apps.processing.failures import fail_stop, is_infrastructure
from stream_apps.processing.metrics import WorkerMetrics
from stream_apps.processing.processor import Processor
from stream_apps.processing.repair import RangeReader
from stream_apps.processing.views import MasterData

log = logging.getLogger(__name__)


class Worker:
    """One worker process: the Faust app with its topics, tables, agent and tick timer.

    Building it does no I/O; Faust runs :attr:`app` (``faust.Worker(worker.app)``).
    ``settle``: the process runs only this app, so settle its heap once the first batch of
    records loaded the master data and thresholds (:func:`iotmon.runtime.settle_heap`)."""

    def __init__(
        self, settings: Settings, registry: CollectorRegistry | None = None, *, settle: bool = False
    ) -> None:
        install_lenient_header_names()  # aiokafka: one odd header name must not stop a fetch
        self.settings = settings
        w, kafka = settings.worker, settings.kafka
        self.partitions = kafka.default_partitions
        self.metrics = WorkerMetrics(registry or CollectorRegistry())
        self.app = faust.App(
            f"{kafka.topic_prefix}{w.app_id}",
            broker=f"kafka://{kafka.bootstrap_servers}",
            broker_credentials=faust_glue.credentials(kafka),
            store="memory://",
            web_port=w.web_port,
            web_enabled=False,
            topic_partitions=self.partitions,
            topic_replication_factor=kafka.replication_factor,
            broker_session_timeout=w.session_timeout_s,
            broker_heartbeat_interval=w.heartbeat_s,
            consumer_auto_offset_reset="earliest",
            stream_wait_empty=False,
            producer_acks=-1,
            # No standby replicas: promoting a standby to active was seen to skip changelog
            # records (state rolled back while offsets were committed); without standbys a
            # new owner restores the changelog from its start.
            table_standby_replicas=0,
            table_key_serializer="raw",
            table_value_serializer="raw",
            # Outputs go out as one record batch per topic partition and input record
            # (stream_apps/processing/batches.py); below the brokers' 1 MB message limit.
            producer_max_batch_size=512 * 1024,
            datadir=str(settings.stack.state_dir / "worker" / f"{kafka.topic_prefix}{w.app_id}"),
        )
        faust_glue.install_transport(self.app, w.fetch_max_wait_ms)
        self.readings_name = topic_name("readings", kafka.topic_prefix)
        self.readings = self.app.topic(
            self.readings_name,
            partitions=self.partitions,
            key_serializer="raw",
            value_serializer="raw",
        )
        # Values are our own JSON (pydantic), stored as bytes.  "sensor-seen": sealed chunks
        # of each open hour's capture instants (engine.SeenChunk), written once each, so
        # that a sensor's state written per record stays small.
        tables = Tables(
            sensors=self._table("sensor-state"),
            partitions=self._table("partition-state"),
            chunks=self._table("sensor-seen"),
        )
        self.views = MasterData(kafka)
        applier = Applier(
            w,
            topic_prefix=kafka.topic_prefix,
            partitions=self.partitions,
            tables=tables,
            # Faust's own producer, so that its flush before a commit covers the outputs.
            sender=BatchSender(partial(faust_glue.kafka_producer, self.app), self._refused),
            views=self.views,
            metrics=self.metrics,
            committed=partial(faust_glue.committed_offset, self.app, self.readings_name),
        )
        repair_group = f"{self.app.conf.id}-repair"
        self.processor = Processor(
            applier,
            topic_prefix=kafka.topic_prefix,
            read_range=RangeReader(kafka, repair_group, self.readings_name),
        )
        self._settle = settle
        self._owned: set[int] = set()  # readings partitions assigned at the last batch
        self._turns = itertools.count()
        self.app.agent(self.readings, name="process-readings")(self.process)
        # Every worker ticks the partitions it owns (not "the leader" ticks all: Faust's
        # leader election could leave no worker ticking after a rebalance).  Two workers
        # that briefly both believe they own a partition tick it twice, which is harmless.
        # The partitions take turns, one every TICK_INTERVAL_S / partitions: a tick visits
        # every sensor of its partition, and the ticks of all partitions at once held up the
        # readings behind them for 65-140 ms every TICK_INTERVAL_S (2,000 sensors).
        self.app.timer(w.tick_interval_s / self.partitions)(self.tick)

    def _table(self, name: str) -> faust_glue.FaustTable:
        table = self.app.Table(name, partitions=self.partitions, key_type=bytes, value_type=bytes)
        return faust_glue.FaustTable(table)

    # -- the agent -----------------------------------------------------------------------
    async def process(self, stream: faust.StreamT[bytes]) -> None:
        """The agent: batches of records of the readings topic, each applied and written
        before Faust acknowledges it (when the loop asks for the next batch)."""
        w = self.settings.worker
        # Up to batch_max_records records at a time, waiting at most batch_wait_s for them:
        # the per-record costs (a state written back, a record batch per output topic) are
        # paid once per batch.
        async for events in faust_glue.take_events(stream, w.batch_max_records, w.batch_wait_s):
            try:
                await self.process_batch(events)
            except Exception as exc:  # noqa: BLE001 - no record's doing: acknowledge nothing
                # The processor dead-letters every record it fails on, so what reaches here
                # is an infrastructure failure (or a failure of the worker itself).  Raising
                # it would make Faust restart the agent and acknowledge this batch unapplied
                # (faust_glue.take_events); the process ends instead, and the restarted
                # worker reads the batch again.
                fail_stop(exc, "processing a batch of records")
            except BaseException:
                self.processor.reset()  # cancelled: cached states may be half updated
                raise

    async def process_batch(self, events: Sequence[EventT[bytes]]) -> None:
        # Records of a partition revoked while they waited in the batch are skipped: the
        # tables no longer hold that partition's states here, so applying them would write
        # states built from nothing, and the new owner reads them again anyway.
        owned = {
            tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.readings_name
        }
        if owned != self._owned:  # a rebalance: held snapshots of others' sensors go
            self._owned = owned
            self.processor.applier.pacer.forget(self._owns)
        self._refresh_views()  # master data and thresholds changed since the last batch
        if self._settle:
            settle_heap()
            self._settle = False
        process = self.processor.process
        for event in events:
            msg = event.message
            if msg.partition not in owned:
                self.metrics.revoked.inc()
                continue
            process(msg.partition, msg.offset, msg.timestamp, msg.key, event.value)
        # No flush of the producer here: the batches are with it, and it sends them at once
        # (no linger); Faust flushes it before it commits offsets.  A flush in this loop
        # waited for the broker's acknowledgements and held up the next batch.
        await self.processor.flush()

    def _owns(self, sensor_id: str) -> bool:
        return partition_for(sensor_id, self.partitions) in self._owned

    def _refresh_views(self) -> None:
        if not self.views.loaded:
            self.views.load()  # never evaluate before the thresholds are known
            return
        try:
            self.views.refresh()
        except Exception as exc:  # the views' failure, not the records'
            if is_infrastructure(exc):
                raise
            # A record the views cannot apply is consumed and skipped by the view; the next
            # refresh goes on after it, so this never repeats for the same record.
            self.metrics.task_errors.labels("views").inc()
            log.error(
                "refreshing master data and thresholds failed (%s: %s); the records go on"
                " with the ones known so far",
                type(exc).__name__,
                exc,
                exc_info=exc,
            )

    def _refused(self, exc: BaseException) -> None:
        fail_stop(exc, "delivering outputs to Kafka")

    # -- the tick timer --------------------------------------------------------------------
    async def tick(self) -> None:
        """Write a clock tick into the next readings partition in turn, if this worker
        owns it.  A failure skips this tick (the next one follows), unless it is an
        infrastructure failure, which stops the worker as the agent's do."""
        partition = next(self._turns) % self.partitions
        try:
            if faust_glue.owns_active(self.app, self.readings_name, partition):
                value = ReadingBatch(tick_at=datetime.now(UTC)).model_dump_json().encode()
                await self.readings.send(value=value, partition=partition)
        except Exception as exc:  # one tick, not the timer
            if is_infrastructure(exc):
                fail_stop(exc, f"sending a tick to partition {partition}")
            # Raised, it would end the timer task (and crash the app): no more ticks.
            self.metrics.task_errors.labels("tick").inc()
            log.error(
                "tick of partition %d failed (%s: %s); skipped",
                partition,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )


def create_app(
    settings: Settings, registry: CollectorRegistry | None = None, *, settle: bool = False
) -> faust.App:
    """The Faust app of a :class:`Worker` (no I/O until started)."""
    return Worker(settings, registry, settle=settle).app
