"""Every use the worker makes of Faust's (and aiokafka's) private API, in one place.

The worker depends on Faust (faust-streaming 0.15) for consumer groups, partition
assignment, changelog-backed tables and offset commits, and goes around it where Faust's
public API is too slow or too fixed (see docs/stream-processing.md).  Each of those
detours is here, named by what it is for, so that an upgrade of Faust or aiokafka is
checked in this file and in ``iotmon/kafka_records.py`` (aiokafka's record reader, for
header names that are not UTF-8, shared with the API's readers):

* :func:`install_transport`: the consumer's fetch wait (``fetch_max_wait_ms``);
* :func:`kafka_producer`: the aiokafka producer under Faust's, for record batches;
* :func:`committed_offset`: the offsets this worker committed (Faust's monitor);
* :func:`owns_active`: the partitions this worker owns as active (the assignor);
* :func:`take_events`: batches of events, acknowledged after the loop body;
* :class:`FaustTable`: a table's storage and changelog topic, for writes that skip
  Faust's per-key changelog send.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT, TableT

from iotmon.settings import KafkaSettings


def credentials(kafka: KafkaSettings) -> faust.SASLCredentials | None:
    """The worker's SASL/SCRAM login (None: plaintext, no authentication)."""
    if kafka.security_protocol == "PLAINTEXT":
        return None
    options = kafka.aiokafka_options()
    return faust.SASLCredentials(
        username=options["sasl_plain_username"],
        password=options["sasl_plain_password"],
        mechanism=kafka.sasl_mechanism,
        ssl_context=options.get("ssl_context"),
    )


def install_transport(app: faust.App, fetch_max_wait_ms: int) -> None:
    """Make ``app`` consume with a fetch wait of ``fetch_max_wait_ms`` (call before the app
    creates topics or agents).

    Faust builds its worker consumer with ``fetch_max_wait_ms=1500``, fixed.  aiokafka leaves
    partitions that still have undelivered records out of its next fetch request, so when the
    request it sent covers only partitions without new data, the broker holds it for the
    whole wait while records of the left-out partitions queue up.  At 500 readings/s that
    showed as stalls of 1.5 s in the worker, and as the p95 of the alert latency.  With
    ``IOTMON_WORKER__FETCH_MAX_WAIT_MS`` (100 ms) the worst stall is that long; an idle worker
    sends a few more (empty) fetch requests per second in exchange.  Only the consumer's
    construction changes; everything else is Faust's aiokafka transport.
    """

    class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            # Read by AIOKafkaConsumer.start() when it creates its fetcher.
            consumer._fetch_max_wait_ms = fetch_max_wait_ms
            return consumer

    class Consumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self) -> Any:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(faust_aiokafka.Transport):
        pass

    Transport.Consumer = Consumer
    app.transport = Transport(app.conf.broker_consumer, app)


def kafka_producer(app: faust.App) -> Any:
    """The aiokafka producer Faust itself sends with (started with the app): records handed
    to it are covered by the flush Faust does before every offset commit."""
    return app.producer._ensure_producer()  # type: ignore[attr-defined]


def committed_offset(app: faust.App, topic: str, partition: int) -> int | None:
    """The offset this worker last committed for ``topic``/``partition`` (Faust's monitor
    records every commit); None before its first commit there."""
    offset = app.monitor.tp_committed_offsets.get(TP(topic, partition))
    return None if offset is None else int(offset)


def owns_active(app: faust.App, topic: str, partition: int) -> bool:
    """Whether the latest assignment made this worker the active owner of the partition."""
    return any(
        tp.topic == topic and tp.partition == partition for tp in app.assignor.assigned_actives()
    )


def take_events(
    stream: faust.StreamT[bytes], max_events: int, within_s: float
) -> AsyncIterator[Sequence[EventT[bytes]]]:
    """Up to ``max_events`` events at a time, waiting at most ``within_s`` for them.

    Faust acknowledges the events of a batch only when the loop asks for the next one (or
    when the generator is closed, e.g. collected after the loop body raised: then the
    events are acknowledged even though the body did not finish them).  So the loop body
    must either finish a batch or stop the process without returning to Faust.
    """
    return stream.take_events(max_events, within_s)  # type: ignore[attr-defined, no-any-return]


class FaustTable:
    """A Faust table as :class:`~stream_apps.processing.state_store.StateStore` uses it:
    values read through the table, written straight into its storage, and the changelog
    records sent by the caller (one record batch with the outputs, not a send per key)."""

    def __init__(self, table: TableT[Any, Any]) -> None:
        self.name: str = table.name
        self.get: Callable[[bytes], bytes | None] = table.get  # bound once: called per record
        self._table = table

    def storage(self) -> MutableMapping[bytes, bytes]:
        """The table's store itself: assigning to it sends no changelog record."""
        return self._table.data

    def changelog(self) -> str:
        """The name of the table's changelog topic."""
        return self._table.changelog_topic.get_topic_name()
