"""settle_heap: what exists when a process starts to serve is never walked again by the
cyclic collector, and young objects are collected less often."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from iotmon.runtime import YOUNG_GC_THRESHOLD, settle_heap

pytestmark = pytest.mark.unit


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_settle_heap_freezes_startup_objects_and_raises_the_young_threshold(
    restored_gc: None,
) -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a reference cycle: only the cyclic collector frees it

    startup = [Node() for _ in range(1000)]
    _, middle, old = gc.get_threshold()
    settle_heap()
    assert gc.get_freeze_count() >= len(startup)
    assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, middle, old)
    # Garbage made afterwards is still collected.
    later = [Node() for _ in range(100)]
    del later
    assert gc.collect() >= 100


def test_metrics_listen_on_loopback_unless_opened() -> None:
    """A real HTTP server: by default only this machine reaches a stage's /metrics."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from iotmon.runtime import serve_metrics  # noqa: PLC0415
    from iotmon.settings import Settings  # noqa: PLC0415

    assert Settings().metrics_host == "127.0.0.1"
    assert serve_metrics(CollectorRegistry(), 0) is None
    server = serve_metrics(CollectorRegistry(), _free_port())
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()
    opened = serve_metrics(CollectorRegistry(), _free_port(), "0.0.0.0")
    try:
        assert opened.server_address[0] == "0.0.0.0"
    finally:
        opened.shutdown()
        opened.server_close()


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
