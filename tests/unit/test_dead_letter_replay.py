"""Selecting, showing and planning the replay of dead letters: no broker, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from producers.deadletters import (
    Selection,
    one_line,
    parse_since,
    printable,
    render_payload,
    stage_of,
)
from producers.replay import plan, refusal, replay_message
from schemas.deadletters import (
    MAX_PAYLOAD_BYTES,
    DeadLetter,
    DeadLetterHeaders,
    DeadLetterReason,
    Stage,
    dead_letter,
)
from schemas.readings import IngressHeaders

pytestmark = pytest.mark.unit

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def parsed(offset: int = 7, **kwargs: object) -> DeadLetter:
    params: dict[str, object] = {
        "reason": DeadLetterReason.UNKNOWN_SENSOR,
        "detail": "sensor S1 is not registered",
        "stage": Stage.INGEST,
        "payload": b'{"sensor_id": "S1"}',
        "key": b"S1",
        "now": NOW,
    }
    params.update(kwargs)
    record = dead_letter(**params)  # type: ignore[arg-type]
    return DeadLetter.parse(
        partition=0,
        offset=offset,
        key=record.key,
        value=record.value,
        headers=list(record.headers),
        timestamp_ms=int(NOW.timestamp() * 1000),
    )


def test_parse_since() -> None:
    assert parse_since(None, None) is None
    assert parse_since(None, "1h", NOW) == NOW - timedelta(hours=1)
    assert parse_since(None, "90s", NOW) == NOW - timedelta(seconds=90)
    assert parse_since(None, "2d", NOW) == NOW - timedelta(days=2)
    assert parse_since("2024-05-01", None) == datetime(2024, 5, 1, tzinfo=UTC)
    assert parse_since("2024-05-01T10:00:00Z", None) == datetime(2024, 5, 1, 10, tzinfo=UTC)
    kst = parse_since("2024-05-01T19:00:00+09:00", None)
    assert kst == datetime(2024, 5, 1, 10, tzinfo=UTC)
    for since, last in (("2024-05-01", "1h"), (None, "1 hour"), (None, "h"), ("yesterday", None)):
        with pytest.raises(ValueError):
            parse_since(since, last)


def test_selection() -> None:
    letter = parsed()
    assert Selection().matches(letter)
    assert Selection().is_empty()
    assert Selection(reasons=frozenset({"unknown_sensor"})).matches(letter)
    assert not Selection(reasons=frozenset({"out_of_range"})).matches(letter)
    assert Selection(stages=frozenset({"ingest", "bridge"})).matches(letter)
    assert not Selection(sensors=frozenset({"S2"})).matches(letter)
    assert Selection(offsets=frozenset({7})).matches(letter)
    assert Selection(since=NOW).matches(letter)
    assert not Selection(since=NOW + timedelta(seconds=1)).matches(letter)


def test_stage_of_records_without_a_stage_header() -> None:
    def legacy(**headers: bytes) -> DeadLetter:
        pairs = [(k.replace("_", "."), v) for k, v in headers.items()]
        return DeadLetter.parse(partition=0, offset=0, key=None, value=b"{}", headers=pairs)

    assert stage_of(legacy(dlq_reason=b"unknown_sensor", dlq_origin_topic=b"raw")) == "ingest"
    assert stage_of(legacy(dlq_reason=b"wrong_topic", dlq_source=b"mqtt")) == "bridge"
    assert stage_of(legacy()) is None  # not a dead letter of this system
    assert refusal(legacy()) is not None


def test_printable_and_one_line_never_pass_control_characters() -> None:
    assert printable("a\x1b[2Jb\n\tc\u202ed") == "a\\x1b[2Jb\n\tc\\u202ed"
    assert one_line("one\n two\x07", 100) == "one two\\x07"
    assert one_line("x" * 20, 10) == "x" * 9 + "…"


def test_render_payload() -> None:
    assert render_payload(b'{"a": 1}') == render_payload(b'{"a": 1}', 100)
    assert render_payload(b'{"a": 1}').kind == "text"
    text = render_payload(b"abc\x1bdef")
    assert text.body == "abc\\x1bdef"
    cut = render_payload("é".encode() * 10, text_limit=4)
    assert cut.kind == "text (cut)"
    assert cut.body == "éééé\n... 12 more bytes"
    binary = render_payload(bytes(range(256)) * 4, hex_limit=32)
    assert binary.kind == "hex"
    assert binary.body.splitlines()[0].startswith("00000000  00 01 02")
    assert binary.body.endswith("... 992 more bytes")
    assert not any(ch in binary.body for ch in "\x00\x1b\x7f")


def test_refusals() -> None:
    assert refusal(parsed()) is None
    assert refusal(parsed(index=3)) is None  # a batch item is its own reading
    assert refusal(parsed(stage=Stage.BRIDGE, key=None)) is None
    worker = refusal(parsed(stage=Stage.WORKER))
    assert worker is not None and "stage worker" in worker
    assert refusal(parsed(stage=Stage.SINK_READINGS)) is not None
    big = refusal(parsed(payload=b"x" * (MAX_PAYLOAD_BYTES + 1)))
    assert big is not None and "cut" in big
    assert refusal(parsed(payload=b"")) is not None


def test_replay_message_keeps_key_payload_and_the_bridge_headers() -> None:
    letter = parsed(
        offset=12,
        index=1,
        origin_topic="raw",
        origin_offset=3,
        source=b"mqtt",
        passthrough=[
            (IngressHeaders.MQTT_TOPIC, b"sensors/S1/readings"),
            (IngressHeaders.RECEIVED_AT, b"2024-05-01T11:59:59+00:00"),
            (IngressHeaders.GATEWAY, b"gw-1"),
        ],
    )
    message = replay_message(letter)
    assert message.key == b"S1"
    assert message.value == b'{"sensor_id": "S1"}'
    assert message.headers == [
        (IngressHeaders.MQTT_TOPIC, b"sensors/S1/readings"),
        (IngressHeaders.RECEIVED_AT, b"2024-05-01T11:59:59+00:00"),
        (IngressHeaders.GATEWAY, b"gw-1"),
        (IngressHeaders.SOURCE, b"mqtt"),  # from dlq.source
        (DeadLetterHeaders.REPLAYED_FROM, b"0:12"),
    ]
    passed = replay_message(parsed(passthrough=[(IngressHeaders.SOURCE, b"kafka")]))
    assert [v for k, v in passed.headers if k == IngressHeaders.SOURCE] == [b"kafka"]


def test_plan() -> None:
    fresh, done, worker = parsed(1), parsed(2), parsed(3, stage=Stage.WORKER)
    previous = {(0, 2): NOW, (0, 3): NOW}
    todo, already, skipped = plan([fresh, done, worker], previous)
    assert [x.offset for x in todo] == [1]
    assert [(o.offset, o.note) for o in already] == [(2, f"replayed at {NOW.isoformat()}")]
    assert [o.offset for o in skipped] == [3]
    todo, already, skipped = plan([fresh, done, worker], previous, force=True)
    assert [x.offset for x in todo] == [1, 2]
    assert not already
    assert [o.offset for o in skipped] == [3]
