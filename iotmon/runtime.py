"""Process plumbing shared by the long-running commands: stop on signals, serve metrics,
settle the heap."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (graceful stop: finish the batch, flush, commit)."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> Any:
    """Expose ``registry`` at http://host:port/metrics (port 0: not at all); returns the
    server.  The host is loopback unless the deployment opens it (``IOTMON_METRICS_HOST``,
    e.g. 0.0.0.0 in a pod that Prometheus scrapes)."""
    if not port:
        return None
    server, _thread = start_http_server(port, addr=host, registry=registry)
    log.info("metrics on %s:%d/metrics", host, port)
    return server


# Objects allocated before CPython's young generation is collected (its default is 700).
# A stream process allocates thousands per batch that die within it; collecting every 700
# allocations mostly promoted objects still in flight, and the old generation grew fast.
YOUNG_GC_THRESHOLD = 20_000


def settle_heap() -> None:
    """Make the objects built to start (modules, clients, master data) permanent for the
    cyclic garbage collector, and collect young objects less often.  Call it once, when the
    process is about to serve.

    A full collection walks every tracked object.  In the worker those were ~180,000, most
    of them from imports and startup, and it stopped the process for 60-200 ms every five
    seconds at 2,000 readings/s: the largest share of the latency's p99 (see
    docs/performance.md).  Frozen objects are never walked again (nor freed: nothing built
    at startup is meant to be).
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, middle, old)
    log.debug("heap settled: %d objects frozen", gc.get_freeze_count())
