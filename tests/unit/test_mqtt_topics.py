from __future__ import annotations

import pytest

from producers.topics import TopicMatch, compile_pattern, match_topic

pytestmark = pytest.mark.unit


def test_default_pattern() -> None:
    p = compile_pattern("sensors/{sensor_id}/readings")
    assert p.subscription == "sensors/+/readings"
    assert p.match("sensors/TEMPIOT-A011/readings") == TopicMatch("TEMPIOT-A011", None)
    assert p.match("sensors/TEMPIOT-A011/status") is None
    assert p.match("sensors/a/b/readings") is None


def test_prefix_gateway_and_hash() -> None:
    p = compile_pattern("gw/{gateway}/#", prefix="plant1/")
    assert p.subscription == "plant1/gw/+/#"
    assert p.match("plant1/gw/G7/line3/batch") == TopicMatch(None, "G7")
    patterns = [compile_pattern("sensors/{sensor_id}/readings"), p]
    assert match_topic(patterns, "plant1/gw/G7/x") == TopicMatch(None, "G7")
    assert match_topic(patterns, "other/topic") is None


@pytest.mark.parametrize("bad", ["a/#/b", "a/x+/b", "a/{sensor_id}/{sensor_id}", "a/{foo}x"])
def test_invalid_patterns_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        compile_pattern(bad)
