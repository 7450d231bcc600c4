"""Strict, bounded decoding of JSON documents from untrusted bytes.

:func:`loads` turns the bytes of one record into a JSON value or a :class:`DocumentError`
with a :class:`DeadLetterReason`; it never raises, whatever the bytes.  Compared to a plain
``json.loads`` it is strict where a parser would silently pick one meaning, and bounded where
a parser would spend unbounded time, memory or stack:

- a key repeated in any object of the document is ``duplicate_key`` (parsers keep the last one);
- nesting deeper than ``max_depth`` is ``too_deep``, found without recursion, so that a
  100,000-deep ``[[[[...]]]]`` is as cheap to reject as any other bad document;
- a top-level array longer than ``max_items`` is one ``batch_too_long``;
- a string holding a lone UTF-16 surrogate (``"\\ud800"``) is ``malformed_json``: it is not
  Unicode text and no UTF-8 writer downstream could keep it;
- a leading byte order mark is ``malformed_json`` (RFC 8259 forbids it in a network message).

The non-standard literals ``NaN``, ``Infinity`` and ``-Infinity``, and numbers beyond the range
of a double (``1e999``), are read as non-finite floats so that the caller can reject the field
holding one as not finite instead of the whole document as broken.  Integers outside the 64-bit
range are read as floats, as orjson reads them, so that a decoded value always has a bounded size.

orjson is the fast path.  The standard library parser, several times slower, reads only the
documents orjson refuses and those that may hold a duplicate key.  Which those are is decided
by counting colons: a colon of JSON text ends a key or is a character of a string, and orjson
writes a string's colons as they are, so when the text has as many colons as the value
written back (and no escaped colon, ``\\u003a``), no key was dropped.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate, chain
from typing import Any

import orjson

from schemas.deadletters import DeadLetterReason

R = DeadLetterReason

# A JSON string, escapes included; possessive, so that unterminated strings (closed by "?)
# and runs of escaped quotes cost linear time instead of a backtracking search.
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")
_DEPTH_STEP = [0] * 256
_DEPTH_STEP[ord("[")] = _DEPTH_STEP[ord("{")] = 1
_DEPTH_STEP[ord("]")] = _DEPTH_STEP[ord("}")] = -1
_SURROGATE = re.compile("[\ud800-\udfff]")
# orjson keeps integers in this range exact and reads larger ones as floats.
_INT_RANGE = (-(2**63), 2**64)
_CONTAINERS = frozenset((dict, list))


@dataclass(frozen=True)
class DocumentError:
    """Why a document was refused: a reason and a sentence for people."""

    reason: DeadLetterReason
    detail: str


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def loads(raw: bytes, *, max_depth: int, max_items: int) -> Any | DocumentError:
    """The JSON value of ``raw``, or why it is refused.  Never raises.

    ``max_depth`` bounds the nesting of arrays and objects (``[{}]`` is 2 deep); ``max_items``
    bounds the length of a top-level array.  Anything but UTF-8 without a byte order mark is
    refused as ``invalid_utf8`` or ``malformed_json``.
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _strict(raw, max_depth, max_items, f"{exc}")
    if type(value) is list:
        if len(value) > max_items:
            return _too_long(len(value), max_items)
        nested = True
    else:
        # Typically an object of scalars (one reading): one C-level pass over its values' types.
        nested = type(value) is dict and not _CONTAINERS.isdisjoint(map(type, value.values()))
    if nested and _deeper_than(value, max_depth):
        return _too_deep(max_depth)
    # An escaped colon (\u003a) is a colon in the value but not in the text.
    if raw.find(b"\\") >= 0 and (b"\\u003a" in raw or b"\\u003A" in raw):
        return _duplicate_check(raw, value, max_depth, max_items)
    # orjson writes every ':' of a string as itself, and the depth is now far below its
    # limit for writing (255), so this cannot raise.
    if raw.count(b":") != orjson.dumps(value).count(b":"):
        return _duplicate_check(raw, value, max_depth, max_items)
    return value


def dumps(value: Any) -> bytes:
    """JSON text of a value :func:`loads` returned.  Never raises for such a value.

    Non-finite floats are written as the literals they were read from (``NaN``, ``Infinity``),
    not as ``null``, so that what is kept of a rejected item shows what was sent.
    """
    try:
        text = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return _stdlib_dumps(value)
    if b"null" in text and _has_non_finite(value):
        return _stdlib_dumps(value)
    return text


def _stdlib_dumps(value: Any) -> bytes:
    # ensure_ascii: the result is ASCII whatever the strings hold, so encoding cannot fail.
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _duplicate_check(raw: bytes, value: Any, max_depth: int, max_items: int) -> Any:
    """``value`` when a strict re-read of ``raw`` finds no duplicate key, else the error."""
    strict = _strict(raw, max_depth, max_items, "")
    return strict if isinstance(strict, DocumentError) else value


def _strict(raw: bytes, max_depth: int, max_items: int, orjson_error: str) -> Any:
    """Read ``raw`` with the standard library, bounded and strict, after orjson refused it
    (``orjson_error``, the better detail for broken JSON) or suspected a duplicate key."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return DocumentError(R.INVALID_UTF8, f"not UTF-8: {exc.reason} at byte {exc.start}")
    # Before parsing: the standard library's parser recurses once per level.
    if _text_depth(text) > max_depth:
        return _too_deep(max_depth)
    value = _stdlib_loads(text, orjson_error)
    if isinstance(value, DocumentError):
        return value
    refused = _refused_value(value, max_items)
    return value if refused is None else refused


def _stdlib_loads(text: str, orjson_error: str) -> Any:
    """The value of ``text``, with integers bounded as orjson bounds them, or the error of
    a key repeated in an object or of text that is not JSON (``orjson_error`` its detail
    when there is one)."""
    try:
        return json.loads(text, object_pairs_hook=_object, parse_int=_integer)
    except _DuplicateKey as exc:
        return DocumentError(
            R.DUPLICATE_KEY, f"the key {preview(exc.key)} appears more than once in one object"
        )
    except ValueError as exc:
        return DocumentError(R.MALFORMED_JSON, f"not valid JSON: {orjson_error or exc}")


def _refused_value(value: Any, max_items: int) -> DocumentError | None:
    """Why a parsed value is refused, if it is: a batch longer than ``max_items``, or a
    string holding a lone surrogate."""
    if isinstance(value, list) and len(value) > max_items:
        return _too_long(len(value), max_items)
    lone = _lone_surrogate(value)
    if lone is not None:
        return DocumentError(
            R.MALFORMED_JSON,
            f"not valid JSON text: a string holds the lone surrogate \\u{ord(lone):04x}, "
            "which is not a Unicode character",
        )
    return None


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _integer(text: str) -> int | float:
    # Bounded like orjson's reading: exact within 64 bits, a float beyond (inf past a double),
    # so that no decoded integer is too large to print or serialise.
    if len(text) > 21:
        return float(text)
    value = int(text)
    return value if _INT_RANGE[0] <= value < _INT_RANGE[1] else float(value)


def _text_depth(text: str) -> int:
    """The deepest bracket nesting of a JSON text, strings left out; linear time, no recursion.

    Never less than the depth a parser reaches before it finds the text broken.
    """
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text)).encode("ascii")
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than ``limit`` deep; level by level, no recursion.

    Each level is first scanned for containers at C speed (``isdisjoint`` over the types), so
    a batch of flat objects costs one pass over its values.
    """
    level = [value] if type(value) in _CONTAINERS else []
    depth = 1
    while level:
        if depth > limit:
            return True
        if _CONTAINERS.isdisjoint(map(type, _children(level))):
            return False
        level = [child for child in _children(level) if type(child) in _CONTAINERS]
        depth += 1
    return False


def _children(level: list[Any]) -> Iterator[Any]:
    return chain.from_iterable([n.values() if type(n) is dict else n for n in level])


def _has_non_finite(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if type(node) is float and not math.isfinite(node):
            return True
        if type(node) is dict:
            stack.extend(node.values())
        elif type(node) is list:
            stack.extend(node)
    return False


def _lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate in the strings (keys too) of a decoded value, if any."""
    stack = [value]
    while stack:
        node = stack.pop()
        if type(node) is str:
            found = None if node.isascii() else _SURROGATE.search(node)
            if found:
                return found.group()
        elif type(node) is dict:
            stack.extend(node.keys())
            stack.extend(node.values())
        elif type(node) is list:
            stack.extend(node)
    return None


def _too_deep(max_depth: int) -> DocumentError:
    return DocumentError(R.TOO_DEEP, f"arrays and objects are nested more than {max_depth} deep")


def _too_long(length: int, max_items: int) -> DocumentError:
    return DocumentError(
        R.BATCH_TOO_LONG, f"the batch has {length} items, more than the limit of {max_items}"
    )


def preview(value: Any, limit: int = 80) -> str:
    """A decoded value for a message to people: a string's ``repr`` cut to ``limit``
    characters, a number's ``repr``, the type of anything larger."""
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else f"{value[:limit]!r}..."
    return type(value).__name__ if isinstance(value, dict | list) else repr(value)
