"""The dead-letter format: always fits its topic, whatever the original record carried."""

from __future__ import annotations

import pytest

from api.latest import MAX_STATUS_BYTES, LatestStatuses
from iotmon.settings import KafkaSettings
from schemas.deadletters import (
    MAX_PASSTHROUGH_BYTES,
    DeadLetterHeaders,
    DeadLetterReason,
    Stage,
    dead_letter,
)

pytestmark = pytest.mark.unit


def _size(headers: list[tuple[str, bytes]]) -> int:
    return sum(len(k) + len(v) for k, v in headers)


def test_repeated_and_huge_headers_are_kept_once_and_within_a_budget() -> None:
    passthrough = [("gateway", b"g" * 1000)] * 3000 + [("mqtt.topic", b"t" * 10_000)]
    passthrough += [(f"h{i}", b"x" * 900) for i in range(100)]
    record = dead_letter(
        reason=DeadLetterReason.WRONG_TYPE,
        detail="d" * 100_000,
        stage=Stage.INGEST,
        payload=b"{}",
        key=b"k" * 100_000,
        passthrough=passthrough,
    )
    names = [k for k, _ in record.headers]
    assert names.count("gateway") == 1
    assert _size(record.headers) < MAX_PASSTHROUGH_BYTES + 4 * 1024
    assert len(record.key or b"") <= 1024
    assert dict(record.headers)[DeadLetterHeaders.REASON] == b"wrong_type"


def test_dead_letter_headers_of_the_original_are_not_taken_over() -> None:
    record = dead_letter(
        reason=DeadLetterReason.OUT_OF_RANGE,
        detail="x",
        stage=Stage.INGEST,
        payload=b"{}",
        passthrough=[(DeadLetterHeaders.REASON, b"spoofed"), ("gateway", b"g1")],
        replayed_from=b"0:12",
    )
    headers = dict(record.headers)
    assert [k for k, _ in record.headers].count(DeadLetterHeaders.REASON) == 1
    assert headers[DeadLetterHeaders.REASON] == b"out_of_range"
    assert headers[DeadLetterHeaders.REPLAYED_FROM] == b"0:12"
    assert headers["gateway"] == b"g1"


def test_the_latest_reader_holds_no_oversized_record() -> None:
    held = LatestStatuses(KafkaSettings())
    assert (
        held.apply(
            [(b"S" * 300, b"{}", 0, 1), (b"TEMPIOT-A011", b"x" * (MAX_STATUS_BYTES + 1), 0, 2)]
        )
        == 0
    )
    assert len(held) == 0
    assert held.skipped == 2
