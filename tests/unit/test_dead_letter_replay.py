"""Selecting, showing and planning the replay of dead letters: no broker, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from iotmon.cli import app
from producers.deadletters import (
    Selection,
    one_line,
    parse_since,
    printable,
    render_payload,
    stage_of,
)
from producers.replay import Originals, plan, refusal, replay_message, replayed_from
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


def parsed(
    offset: int = 7, extra: list[tuple[str, bytes]] | None = None, **kwargs: object
) -> DeadLetter:
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
        headers=list(record.headers) + (extra or []),
        timestamp_ms=int(NOW.timestamp() * 1000),
    )


RAW = "iot.readings.raw"


def rejection(offset: int, origin_offset: int = 40, **kwargs: Any) -> DeadLetter:
    """A dead letter of the ingest stage for the raw record at ``origin_offset``."""
    return parsed(
        offset, origin_topic=RAW, origin_partition=1, origin_offset=origin_offset, **kwargs
    )


def of_copy(offset: int, source: int, copy_offset: int = 90) -> DeadLetter:
    """A dead letter of the replayed copy of the dead letter at ``source``."""
    return rejection(
        offset, copy_offset, extra=[(DeadLetterHeaders.REPLAYED_FROM, f"0:{source}".encode())]
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


def test_parse_since_before_the_epoch_and_out_of_range() -> None:
    assert parse_since("0001-01-01T00:00:00Z", None) == datetime(1, 1, 1, tzinfo=UTC)
    assert parse_since(None, "2800w", NOW) == NOW - timedelta(weeks=2800)  # 1970 and before
    tz = parse_since("9999-12-31T22:00:00-01:00", None)
    assert tz == datetime(9999, 12, 31, 23, tzinfo=UTC)
    assert tz is not None and tz.utcoffset() == timedelta(0)
    for since, last in (
        (None, "99999999999w"),
        (None, "999999999d"),
        (None, "9" * 400 + "s"),
        ("0001-01-01T00:00:00+01:00", None),
        ("9999-12-31T23:59:59-01:00", None),
    ):
        with pytest.raises(ValueError, match="year"):
            parse_since(since, last, NOW)


# Durations only: the command rejects them before it connects to anything.  A --since out
# of range is checked in the integration tests, where a command that got past the check
# would read that test's own topics.
@pytest.mark.parametrize(
    "args",
    [
        ["dlq", "count", "--last", "99999999999w"],
        ["dlq", "list", "--last", "999999999d"],
        ["dlq", "replay", "--last", "99999999999w", "--dry-run"],
    ],
)
def test_out_of_range_durations_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "year" in result.output


def test_parse_never_raises_on_the_record_timestamp() -> None:
    def at(ms: int) -> datetime | None:
        letter = DeadLetter.parse(
            partition=0, offset=0, key=None, value=b"{}", headers=[], timestamp_ms=ms
        )
        return letter.timestamp

    # Brokers take any 64-bit CreateTime from a producer.
    for ms in (-(10**15), 10**15, 2**63 - 1, -(2**63), 10**400):
        assert at(ms) is None
    assert at(-1000) == datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert at(int(NOW.timestamp() * 1000)) == NOW


def test_parse_never_raises_on_header_values() -> None:
    letter = DeadLetter.parse(
        partition=0,
        offset=3,
        key=b"\xff",
        value=None,
        headers=[
            (DeadLetterHeaders.REASON, b"\xffbad"),
            (DeadLetterHeaders.SIZE, b"9" * 5000),  # beyond int()'s digit limit
            (DeadLetterHeaders.ORIGIN_OFFSET, b"\xff"),
            (DeadLetterHeaders.INDEX, None),
        ],
    )
    assert letter.size == 0 and not letter.truncated
    assert letter.origin_offset is None and letter.index is None
    assert letter.reason == "\ufffdbad"


def test_a_record_without_readable_headers_reads_as_a_dead_letter_of_unknown_reason() -> None:
    # What ``record_headers`` gives for a record whose header name is not UTF-8 (proved on
    # the real broker in tests/integration/test_header_names.py).
    letter = DeadLetter.parse(partition=0, offset=0, key=None, value=b"{}", headers=[])
    assert letter.reason == "unknown" and stage_of(letter) is None


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
    planned = plan([fresh, done, worker], previous)
    assert [x.offset for x in planned.todo] == [1]
    assert [(o.offset, o.note) for o in planned.already] == [(2, f"replayed at {NOW.isoformat()}")]
    assert [o.offset for o in planned.skipped] == [3]
    planned = plan([fresh, done, worker], previous, force=True)
    assert [x.offset for x in planned.todo] == [1, 2]
    assert not planned.already
    assert [o.offset for o in planned.skipped] == [3]


def test_replayed_from() -> None:
    assert replayed_from(of_copy(9, source=4)) == (0, 4)
    assert replayed_from(parsed()) is None
    # not a dead letter written before this one (at offset 7)
    for raw in (b"4", b"0:", b"a:4", b"0:-4", b"0:4 ", "0:\u0664".encode(), b"0:7", b"1:4"):
        assert replayed_from(parsed(extra=[(DeadLetterHeaders.REPLAYED_FROM, raw)])) is None


def test_plan_publishes_one_copy_of_each_original_record() -> None:
    first, retried, other_item = rejection(3), rejection(8), rejection(9, index=1)
    other_record, bridge = rejection(10, origin_offset=41), parsed(11, stage=Stage.BRIDGE)
    letters = [first, retried, other_item, other_record, bridge]
    planned = plan(letters, {})
    assert [x.offset for x in planned.todo] == [8, 9, 10, 11]
    assert [(o.offset, o.note) for o in planned.skipped] == [(3, "duplicate of offset 8")]
    # the newest is kept when it was replayed before; --force does not publish the others
    planned = plan(letters, {(0, 8): NOW})
    assert [o.offset for o in planned.already] == [8]
    assert [o.offset for o in planned.skipped] == [3]
    assert [x.offset for x in plan(letters, {(0, 8): NOW}, force=True).todo] == [8, 9, 10, 11]
    # a newer one that cannot be replayed does not hide an older one that can
    cut = rejection(12, payload=b"x" * (MAX_PAYLOAD_BYTES + 1))
    planned = plan([first, cut], {})
    assert [x.offset for x in planned.todo] == [3]
    assert [o.offset for o in planned.skipped] == [12]


def test_plan_with_the_originals_of_the_whole_selection() -> None:
    # The duplicate is in a later chunk of the replay: the earlier chunk still skips it.
    originals = Originals.of([rejection(3), rejection(600)])
    planned = plan([rejection(3)], {}, originals=originals)
    assert not planned.todo
    assert [(o.offset, o.note) for o in planned.skipped] == [(3, "duplicate of offset 600")]
    assert [x.offset for x in plan([rejection(600)], {}, originals=originals).todo] == [600]
    # a dead letter the originals did not see stands for itself
    assert [x.offset for x in plan([rejection(7)], {}, originals=originals).todo] == [7]


def test_plan_leaves_out_a_copy_rejected_again() -> None:
    again = of_copy(20, source=4)
    planned = plan([again], {}, replayed={(0, 4)})
    assert not planned.todo
    assert [(o.offset, o.note) for o in planned.again] == [
        (20, "rejected again after replay of offset 4")
    ]
    assert [x.offset for x in plan([again], {}, replayed={(0, 4)}, force=True).todo] == [20]
    # its source not recorded as replayed (the replay died before recording it): published
    assert [x.offset for x in plan([again], {}, replayed={(0, 5)}).todo] == [20]
    # replayed itself with --force before: already replayed
    planned = plan([again], {(0, 20): NOW}, replayed={(0, 4)})
    assert [o.offset for o in planned.already] == [20]


def test_a_copy_rejected_again_holds_the_record_of_its_source() -> None:
    source, again, again_later = rejection(4), of_copy(20, source=4), of_copy(30, 4, 95)
    planned = plan([source, again, again_later], {(0, 4): NOW}, replayed={(0, 4)})
    assert not planned.todo
    assert [(o.offset, o.note) for o in planned.skipped] == [
        (4, "duplicate of offset 30"),
        (20, "duplicate of offset 30"),
    ]
    assert [o.offset for o in planned.again] == [30]
    forced = plan([source, again, again_later], {(0, 4): NOW}, replayed={(0, 4)}, force=True)
    assert [x.offset for x in forced.todo] == [30]
    # a copy of a dead letter outside the selection: the same source, the same record
    assert [x.offset for x in plan([again, again_later], {}).todo] == [30]
