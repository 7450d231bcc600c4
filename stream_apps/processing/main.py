"""Composition root of the stream processing worker (`iotmon worker`)."""

from __future__ import annotations

import faust
from prometheus_client import CollectorRegistry

from iotmon.runtime import serve_metrics
from iotmon.settings import Settings
from stream_apps.processing.app import create_app


def run(settings: Settings) -> None:
    """Run one worker until SIGTERM/SIGINT (Faust handles the signals and the shutdown)."""
    registry = CollectorRegistry()
    serve_metrics(registry, settings.worker.metrics_port, settings.metrics_host)
    (settings.stack.state_dir / "worker").mkdir(parents=True, exist_ok=True)
    app = create_app(settings, registry, settle=True)
    worker = faust.Worker(app, loglevel=settings.log.level.lower(), quiet=True)
    worker.execute_from_commandline()
