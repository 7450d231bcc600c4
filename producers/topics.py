"""MQTT topic patterns of the bridge: ``sensors/{sensor_id}/readings`` and the like.

A pattern names levels with ``{sensor_id}`` or ``{gateway}`` (each one level, subscribed as
``+``); a trailing ``#`` matches any rest.  Plain functions, tested without a broker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FIELD = re.compile(r"^\{(sensor_id|gateway)\}$")


@dataclass(frozen=True)
class TopicMatch:
    sensor_id: str | None
    gateway: str | None


@dataclass(frozen=True)
class TopicPattern:
    pattern: str
    subscription: str
    regex: re.Pattern[str]

    def match(self, topic: str) -> TopicMatch | None:
        m = self.regex.match(topic)
        if m is None:
            return None
        groups = m.groupdict()
        return TopicMatch(groups.get("sensor_id"), groups.get("gateway"))


def compile_pattern(pattern: str, prefix: str = "") -> TopicPattern:
    """Compile ``prefix + pattern``; ValueError for a pattern MQTT could not subscribe to."""
    levels = (prefix + pattern).split("/")
    subscription: list[str] = []
    regex: list[str] = []
    for i, level in enumerate(levels):
        field = _FIELD.match(level)
        if field:
            if f"(?P<{field[1]}>" in "".join(regex):
                raise ValueError(f"{pattern!r} names {{{field[1]}}} twice")
            subscription.append("+")
            regex.append(f"(?P<{field[1]}>[^/]+)")
        elif level == "+":
            subscription.append("+")
            regex.append("[^/]+")
        elif level == "#":
            if i != len(levels) - 1:
                raise ValueError(f"{pattern!r}: '#' must be the last level")
            subscription.append("#")
            regex.append(".*")
        elif "+" in level or "#" in level or "{" in level:
            raise ValueError(f"{pattern!r}: wildcards must fill a whole level")
        else:
            subscription.append(level)
            regex.append(re.escape(level))
    return TopicPattern(pattern, "/".join(subscription), re.compile("^" + "/".join(regex) + "$"))


def match_topic(patterns: list[TopicPattern], topic: str) -> TopicMatch | None:
    """The first pattern that matches ``topic``; None when the topic is not one we read."""
    for p in patterns:
        found = p.match(topic)
        if found is not None:
            return found
    return None
