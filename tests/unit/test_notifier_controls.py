"""Silences, MQTT alert-state topics and states, digests and escalation texts: the plain
functions of the notifier, table by table and property by property, without services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.alerts import (
    TOPIC_FIELDS,
    AlertKind,
    AlertTransition,
    TopicTemplateError,
    check_topic_template,
)
from schemas.common import Status
from stream_apps.notifier.channels import (
    DIGEST_LINES,
    SLACK_BLOCKS_MAX,
    SLACK_SECTION_MAX,
    Outgoing,
    SlackChannel,
    fill_link,
    fill_topic,
    location_state,
    render,
    render_digest,
    render_escalation,
    slack_sections,
)
from stream_apps.notifier.routing import Silence, silenced_by
from tests.unit.test_notifier_routing import event

pytestmark = pytest.mark.unit

T0 = datetime(2026, 7, 1, 5, 0, tzinfo=UTC)


def silence(**over: Any) -> Silence:
    doc: dict[str, Any] = {
        "silence_id": 1,
        "starts_at": T0,
        "ends_at": T0 + timedelta(hours=1),
        "reason": "maintenance",
        "created_by": "lee",
    }
    doc.update(over)
    return Silence(**doc)


# The event: decided at T0 + 1 min, SinPyeong / MX-1 / floor 1 / Storage, pcv_temperature.
@pytest.mark.parametrize(
    ("over", "muted"),
    [
        ({}, True),  # everything NULL: mutes all within its range
        ({"factory": "SinPyeong"}, True),
        ({"factory": "JangNim"}, False),
        ({"factory": "SinPyeong", "building": "MX-1", "floor": 1, "area": "Storage"}, True),
        ({"floor": 2}, False),
        ({"plant": "P2"}, False),
        ({"sensor_id": "TEMPIOT-A011"}, True),
        ({"sensor_id": "TEMPIOT-A012"}, False),
        ({"threshold_type": "pcv_temperature"}, True),
        ({"threshold_type": "humidity"}, False),
        ({"starts_at": T0 + timedelta(minutes=1)}, True),  # the start is inside
        ({"ends_at": T0 + timedelta(minutes=1)}, False),  # the end is not
        ({"starts_at": T0 + timedelta(minutes=2)}, False),  # not yet
        ({"starts_at": T0 - timedelta(days=2), "ends_at": T0 - timedelta(days=1)}, False),
    ],
)
def test_silence_scope_metric_and_time_range(over: dict[str, Any], muted: bool) -> None:
    e = event(decided_at=T0 + timedelta(minutes=1))
    assert silence(**over).mutes(e) is muted


def test_a_metric_bound_silence_leaves_sensor_silent_alerts_alone() -> None:
    quiet = event(kind=AlertKind.SENSOR_SILENT, metric=None, decided_at=T0 + timedelta(minutes=1))
    assert not silence(threshold_type="temperature").mutes(quiet)
    assert silence(factory="SinPyeong").mutes(quiet)


def test_silenced_by_names_the_first_silence_and_honours_the_time_asked() -> None:
    e = event(decided_at=T0 + timedelta(minutes=1))
    later = silence(silence_id=7, factory="SinPyeong")
    first = silence(silence_id=3)
    assert silenced_by(e, [later, first]) == first
    assert silenced_by(e, [silence(factory="JangNim")]) is None
    # Escalations ask about now, not about when the event was decided.
    assert silenced_by(e, [first], at=T0 + timedelta(hours=2)) is None


@pytest.mark.parametrize(
    ("template", "ok"),
    [
        ("alerts/{factory}/{loc_id}", True),
        ("alerts/{plant}/{factory}/{building}/{floor}/{area}/{loc_id}/{metric}", True),
        ("alerts/line-3/andon", True),
        ("other/{factory}", False),  # outside the notifier's tree
        ("alerts/{nope}", False),
        ("alerts/+/{loc_id}", False),
        ("alerts/#", False),
        ("alerts//{loc_id}", False),
        ("alerts/{loc_id", False),
        ("alerts/{loc_id}}", False),
        ("alerts/x\x00y", False),
        ("alerts/" + "x" * 600, False),
    ],
)
def test_topic_templates(template: str, ok: bool) -> None:
    if ok:
        assert check_topic_template(template, "alerts") == template
    else:
        with pytest.raises(TopicTemplateError):
            check_topic_template(template, "alerts")


_values = st.text(min_size=0, max_size=12)


@given(factory=_values, building=_values, area=_values, loc=_values.filter(bool))
def test_a_filled_topic_keeps_its_levels_whatever_the_master_data_says(
    factory: str, building: str, area: str, loc: str
) -> None:
    """Names with '/', '+', '#' or nothing at all never add, remove or widen a level, so a
    location's state lands on its own topic and nowhere else."""
    template = "alerts/{factory}/{building}/{area}/{loc_id}"
    topic = fill_topic(
        template,
        event(factory=factory or None, building=building, area=area, loc_id=loc),
    )
    levels = topic.split("/")
    assert len(levels) == 5 and levels[0] == "alerts"
    assert all(level and "+" not in level and "#" not in level for level in levels)
    assert "\x00" not in topic


def test_every_topic_field_is_an_event_attribute() -> None:
    e = event()
    for name in TOPIC_FIELDS:
        assert hasattr(e, name), name
    assert fill_topic("alerts/{floor}/{metric}/{sensor_id}", e) == (
        "alerts/1/pcv_temperature/TEMPIOT-A011"
    )


def test_location_state_merges_the_event_with_the_other_active_alerts() -> None:
    e = event(level=Status.WARNING, metric="temperature")
    other = {
        "alert_id": "00000000-0000-0000-0000-000000000001",
        "kind": "threshold",
        "metric": "humidity",
        "level": "critical",
        "measured_value": 91,
        "since": T0,
        "acknowledged": True,
    }
    stale_self = {**other, "alert_id": str(e.alert_id), "level": "critical"}
    state = location_state(e, [other, stale_self], now=T0)
    assert state["state"] == "critical"
    assert [a["metric"] for a in state["active"]] == ["humidity", "temperature"]
    # The event's own alert is as the event says (warning), not as the database had it.
    assert [a["level"] for a in state["active"]] == ["critical", "warning"]
    assert state["last_event"]["event_id"] == str(e.event_id)
    assert state["factory"] == "SinPyeong" and state["loc_id"] == "A011"

    resolved = event(alert_id=e.alert_id, transition=AlertTransition.RESOLVED)
    assert location_state(resolved, [stale_self])["state"] == "normal"
    assert location_state(resolved, [stale_self, other])["state"] == "critical"
    assert location_state(resolved, [])["active"] == []


def test_digest_and_escalation_texts() -> None:
    events = [event(sensor_id=f"TEMPIOT-A{n:03d}", loc_id=f"A{n:03d}") for n in range(3)]
    text = render_digest(events, "en", "https://board.example/")
    lines = text.splitlines()
    assert lines[0] == "[DIGEST] 3 alert notifications (rate limit reached)"
    assert [line[:2] for line in lines[1:4]] == ["• "] * 3 and "A002" in lines[3]
    assert lines[-1] == "https://board.example/"
    assert render_digest(events, "ko").startswith("[요약] 경보 알림 3건")
    many = [event() for _ in range(DIGEST_LINES + 7)]
    assert render_digest(many, "en").splitlines()[-1] == "… and 7 more"

    assert render_escalation(events[0], 900, "en").startswith(
        "[ESCALATION] critical alert not acknowledged for 15 min\n[CRITICAL]"
    )
    assert render_escalation(events[0], 900, "ko").startswith(
        "[에스컬레이션] 위험 경보가 15분 동안 확인되지 않았습니다"
    )


def test_a_link_can_point_at_the_alerts_location() -> None:
    e = event(loc_id="A 1/2", factory="신평")
    text = render(e, "en", "https://board.example/#/location/{loc_id}?f={factory}&x={other}")
    assert text.splitlines()[-1] == (
        "https://board.example/#/location/A%201%2F2?f=%EC%8B%A0%ED%8F%89&x={other}"
    )
    assert fill_link("https://board.example/", e) == "https://board.example/"


@given(lines=st.lists(st.text(max_size=4000).map(lambda t: t.replace("\n", " ")), max_size=120))
def test_slack_sections_always_fit_slacks_limits(lines: list[str]) -> None:
    """A digest of many events, or one absurdly long line, still makes a message Slack
    takes: every section within 3,000 characters, at most 50 blocks."""
    parts = slack_sections("\n".join(lines))
    assert 1 <= len(parts) <= SLACK_BLOCKS_MAX
    assert all(1 <= len(p) <= SLACK_SECTION_MAX for p in parts)


def test_a_long_slack_digest_is_split_into_sections_in_order() -> None:
    events = [event(sensor_id=f"TEMPIOT-A{n:03d}", loc_id=f"A{n:03d}") for n in range(60)]
    text = render_digest(events, "ko")
    message = Outgoing("k", 1, "https://hooks.example/x", None, events[-1], text, kind="digest")
    import orjson  # noqa: PLC0415

    doc = orjson.loads(SlackChannel.body(message))
    sections = [b["text"]["text"] for b in doc["blocks"]]
    assert len(sections) > 1 and "\n".join(sections) == text


def test_a_resolution_says_so_before_the_level_it_had() -> None:
    over = event(transition=AlertTransition.RESOLVED)
    assert render(over, "en").startswith("[RESOLVED · was CRITICAL] Perceived temperature")
    assert render(over, "ko").startswith("[해제 · 이전 위험] 체감온도")
    assert render(event(), "en").startswith("[CRITICAL] Perceived temperature")
