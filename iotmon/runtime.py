"""Process plumbing shared by the long-running commands: stop on signals, serve metrics."""

from __future__ import annotations

import logging
import signal
import threading

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


def serve_metrics(registry: CollectorRegistry, port: int) -> None:
    """Expose ``registry`` at http://0.0.0.0:port/metrics (0 disables it)."""
    if port:
        start_http_server(port, registry=registry)
        log.info("metrics on :%d/metrics", port)
