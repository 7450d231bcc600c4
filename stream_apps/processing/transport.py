"""Faust's Kafka transport with a fetch wait that suits a latency target.

Faust (0.15) builds its worker consumer with ``fetch_max_wait_ms=1500``, fixed.  aiokafka
leaves partitions that still have undelivered records out of its next fetch request, so when
the request it sent covers only partitions without new data, the broker holds it for the
whole wait while records of the left-out partitions queue up.  At 500 readings/s that showed
as stalls of 1.5 s in the worker, and as the p95 of the alert latency.  With
``IOTMON_WORKER__FETCH_MAX_WAIT_MS`` (100 ms) the worst stall is that long; an idle worker
sends a few more (empty) fetch requests per second in exchange.

Only the consumer's construction is changed; everything else is Faust's aiokafka transport.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka


def install(app: faust.App, fetch_max_wait_ms: int) -> None:
    """Make ``app`` use this transport (call before the app creates topics or agents)."""

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
