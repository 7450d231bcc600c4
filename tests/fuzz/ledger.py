"""The dead letters each message must cause, matched with those the stages wrote."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from schemas.deadletters import SMALL_PAYLOAD_BYTES, DeadLetter, DeadLetterReason, Stage
from schemas.readings import IngressHeaders
from tests.fuzz.corpus import Letter, Sent

Pool = Hashable  # what tells a message (and the dead letters it must cause) apart


def fingerprint(payload: bytes | None, size: int | None = None) -> tuple[int, str]:
    """A payload by its length and first bytes: what a dead letter keeps of any payload,
    however much of a large one it cuts (``size``: the length the dead letter gives)."""
    data = payload or b""
    digest = hashlib.sha256(data[:SMALL_PAYLOAD_BYTES]).hexdigest()
    return (len(data) if size is None else size, digest)


def mqtt_pool(topic: str, payload: bytes | None, size: int | None = None) -> Pool:
    return ("mqtt", topic, fingerprint(payload, size))


def preview(data: bytes | None, n: int = 90) -> str:
    data = data or b""
    return repr(data[:n]) + (f"... ({len(data)} bytes)" if len(data) > n else "")


def describe(d: DeadLetter) -> str:
    return (
        f"{d.stage}/{d.reason} error={d.error} index={d.index} origin={d.origin_topic}"
        f"[{d.origin_partition}]@{d.origin_offset} detail={d.detail[:160]!r}"
        f" payload={preview(d.payload)}"
    )


def summarize(title: str, entries: Sequence[tuple[str, str]], limit: int = 25) -> list[str]:
    """(kind, example) pairs as a count per kind with its first example; nothing if none."""
    if not entries:
        return []
    counts = Counter(kind for kind, _ in entries)
    example = {kind: text for kind, text in reversed(entries)}
    lines = [f"{title}: {len(entries)}"]
    lines += [f"  {n} x {kind}: e.g. {example[kind]}" for kind, n in counts.most_common(limit)]
    return lines


@dataclass(frozen=True)
class Slot:
    """A dead letter that ``sent`` must cause and none has filled yet."""

    sent: Sent
    letter: Letter

    def __str__(self) -> str:
        reasons = "|".join(sorted(self.letter.reasons))
        return (
            f"{self.letter.stage}/{reasons} index={self.letter.index}"
            f" payload={preview(self.sent.payload)}"
        )


class Ledger:
    """Matches dead letters with the messages that must cause them.

    A message sent straight to Kafka is told apart by where Kafka put it; one sent over MQTT
    by its topic and payload (``raw`` maps each raw record the bridge wrote to that pool).
    Messages alike in both must cause alike dead letters, so they share one pool.  Call
    :meth:`judge` once, when every message has been sent and delivered."""

    def __init__(
        self, messages: Sequence[Sent], raw_topic: str, raw: dict[tuple[int, int], Pool]
    ) -> None:
        self.messages = messages
        self.raw_topic = raw_topic
        self.raw = raw
        self.slots: dict[Pool, list[Slot]] = defaultdict(list)
        self.kinds: dict[Pool, set[str]] = defaultdict(set)
        for m in messages:
            pool = mqtt_pool(m.mqtt_topic, m.payload) if m.route == "mqtt" else m.at
            self.kinds[pool].add(m.kind)
            self.slots[pool].extend(Slot(m, letter) for letter in m.letters)

    def pool_of(self, d: DeadLetter) -> Pool | None:
        if d.stage == Stage.BRIDGE:
            return mqtt_pool(d.headers.get(IngressHeaders.MQTT_TOPIC, ""), d.payload, d.size)
        if d.origin_topic is None or d.origin_partition is None or d.origin_offset is None:
            return None
        at = (d.origin_topic, d.origin_partition, d.origin_offset)
        if at in self.kinds:
            return at
        if d.origin_topic == self.raw_topic:
            return self.raw.get((d.origin_partition, d.origin_offset))
        return None

    def settle(self, d: DeadLetter) -> str | None:
        """Fill the slot ``d`` answers; the kinds of its message when none is open."""
        pool = self.pool_of(d)
        fits = [
            s
            for s in self.slots.get(pool, [])
            if s.letter.stage == d.stage and d.reason in s.letter.reasons
            if s.letter.index == d.index
        ]
        if not fits:
            return ", ".join(sorted(self.kinds.get(pool, set()))) or "sent by no message"
        # Where a letter allows several reasons, keep the others' narrower slots open.
        self.slots[pool].remove(min(fits, key=lambda s: len(s.letter.reasons)))
        return None

    def judge(self, letters: Sequence[DeadLetter]) -> list[str]:
        """Problems: a dead letter that says too little, one that no message should have
        caused, one that a message should have caused and none did, counts per stage."""
        known_reasons = {r.value for r in DeadLetterReason}
        known_stages = {s.value for s in Stage}
        vague: list[tuple[str, str]] = []
        unexpected: list[tuple[str, str]] = []
        for d in letters:
            if d.reason not in known_reasons or d.stage not in known_stages:
                vague.append(("unknown reason or stage", describe(d)))
            elif d.stage == Stage.BRIDGE and IngressHeaders.MQTT_TOPIC not in d.headers:
                vague.append(("bridge dead letter without its MQTT topic", describe(d)))
            elif d.stage != Stage.BRIDGE and None in (
                d.origin_topic,
                d.origin_partition,
                d.origin_offset,
            ):
                vague.append(("dead letter without its origin", describe(d)))
            kinds = self.settle(d)
            if kinds is not None:
                unexpected.append((kinds, describe(d)))
        missing = [(s.sent.kind, str(s)) for pool in self.slots.values() for s in pool]
        problems = summarize("dead letters that say too little", vague)
        problems += summarize("dead letters no message should have caused", unexpected)
        problems += summarize("dead letters missing", missing)
        expected = Counter(str(x.stage) for m in self.messages for x in m.letters)
        written = Counter(str(d.stage) for d in letters)
        if expected != written:
            problems.append(
                f"dead letters per stage: expected {dict(expected)}, got {dict(written)}"
            )
        return problems
