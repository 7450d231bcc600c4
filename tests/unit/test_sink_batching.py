"""How each sink batches: only the sink that the realtime view waits for lingers briefly."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from iotmon.settings import ApiSettings, Settings
from stream_apps.sinks.main import WRITERS, build
from stream_apps.sinks.runner import SinkMetrics

# Building a sink asks the broker for its dead-letter topic's limit: it needs the stack.
pytestmark = pytest.mark.integration


@pytest.mark.parametrize("from_topic", [True, False])
def test_the_latest_sink_batches_like_history_when_the_api_reads_the_topic(
    from_topic: bool,
) -> None:
    settings = Settings(api=ApiSettings(realtime_from_topic=from_topic))
    metrics = SinkMetrics(CollectorRegistry())
    lingers = {}
    for name in WRITERS:
        runner = build(settings, name, metrics)
        lingers[name] = runner.poll_linger
        runner.consumer.close()
    history = settings.sink.history_linger_s
    assert lingers["readings"] == lingers["aggregates"] == lingers["alerts"] == history
    assert lingers["latest"] == (history if from_topic else settings.sink.poll_linger_s)
