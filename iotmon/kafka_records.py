"""Reading the headers of a Kafka record that any client may have written.

Kafka does not check that a header *name* is UTF-8, and both clients we use fail on one that
is not, each in its own way.  Every consumer in this system reads headers through this
module, so that one such record is handled like any other bad record and not like a crash.

- **confluent-kafka** (ingest, the sinks, ``iotmon dlq``): ``Message.headers()`` builds the
  list with a NULL name and returns it with a ``UnicodeDecodeError`` pending.  Called through
  the C-API's checked call path it raises ``SystemError``; but CPython's specialising
  interpreter skips that check at a hot call site (``msg.headers()`` in a loop), and the
  broken list reaches Python code, where using it is a segmentation fault.  The message also
  keeps the broken list and returns it, without an error, on every later call.
  :func:`read_headers` calls it only through :func:`operator.methodcaller` (always checked),
  and replaces the broken list on the message with a marker.  librdkafka hands names over
  as C strings, so a name is cut at a NUL byte: ``b"source\x00\xff"`` reads as ``source``.
  Nothing on this side can tell; the aiokafka side reads ``"source\x00\ufffd"``.
- **aiokafka** (the Faust worker, the API's readers): the whole fetch fails in the record
  decoder, so the consumer stops at that record forever.  :func:`install_lenient_header_names`
  makes the fetcher decode such a name with U+FFFD for the bytes that are not UTF-8, in the
  batch that holds one (about 22 µs a record, aiokafka's pure-Python reader), and natively
  everywhere else (with a Python wrapper per batch: about 0.2 µs more per record in batches
  of 200 records, a few µs more per batch of one).
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Iterator
from typing import Any, Protocol, SupportsIndex, overload

from aiokafka.consumer import fetcher
from aiokafka.record.default_records import DefaultRecordBatch, _DefaultRecordBatchPy
from aiokafka.record.memory_records import _MemoryRecordsPy

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes | None]]

_headers = operator.methodcaller("headers")  # a checked call, never a specialised one
# What a message holds after its headers failed to read, so that every later read says so.
_UNREADABLE = [("\x00iotmon.unreadable-header-names", None)]


class _Message(Protocol):
    def headers(self) -> Any: ...

    def set_headers(self, headers: Any) -> None: ...


def read_headers(msg: _Message) -> Headers | None:
    """``msg``'s headers (``[]`` for none), or None when a header name is not UTF-8.

    Safe to call more than once per message, with the same answer: after a failure the
    message holds a marker instead of the broken list.
    """
    try:
        headers = _headers(msg)
    except (SystemError, UnicodeDecodeError):
        msg.set_headers(list(_UNREADABLE))  # replaces the broken list the message keeps
        return None
    if headers is None:
        return []
    if headers == _UNREADABLE:
        return None
    return [(name, value) for name, value in headers]


# --- aiokafka -------------------------------------------------------------------------


class _LenientBuffer(bytearray):
    """A record batch's bytes whose slices decode invalid UTF-8 as U+FFFD (header names)."""

    @overload
    def __getitem__(self, index: SupportsIndex) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> bytearray: ...

    def __getitem__(self, index: SupportsIndex | slice) -> int | bytearray:
        item = super().__getitem__(index)
        return _LenientBuffer(item) if isinstance(item, bytearray) else item

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return super().decode(encoding, "replace")


class _LenientBatch(_DefaultRecordBatchPy):  # type: ignore[misc]
    """aiokafka's pure-Python batch reader over a :class:`_LenientBuffer`."""

    def __init__(self, buffer: memoryview) -> None:
        super().__init__(buffer)
        self._buffer: bytearray = _LenientBuffer(buffer)

    def _maybe_uncompress(self) -> None:
        super()._maybe_uncompress()
        if not isinstance(self._buffer, _LenientBuffer):
            self._buffer = _LenientBuffer(self._buffer)


_WARN_EVERY_S = 60.0
_warned = {"at": float("-inf"), "since": 0}


def _warn_lenient(base_offset: int) -> None:
    """Log a lenient read, at most once a minute (every reader of such a record reads it)."""
    now = time.monotonic()
    _warned["since"] += 1
    if now - _warned["at"] >= _WARN_EVERY_S:
        log.warning(
            "a record batch (at offset %d) holds a header name that is not UTF-8; read with"
            " U+FFFD in its place (%d such batches since the last warning)",
            base_offset,
            _warned["since"],
        )
        _warned["at"], _warned["since"] = now, 0


class _Batch:
    """A v2 record batch read natively, and again leniently from the record that failed."""

    __slots__ = ("_buffer", "_native", "_records")

    def __init__(self, buffer: memoryview, native: Any) -> None:
        self._buffer = buffer
        self._native = native
        self._records: Iterator[Any] | None = None

    # What the fetcher reads of a batch, without a __getattr__ detour per batch.
    @property
    def base_offset(self) -> int:
        return int(self._native.base_offset)

    @property
    def next_offset(self) -> int:
        return int(self._native.next_offset)

    @property
    def producer_id(self) -> int:
        return int(self._native.producer_id)

    @property
    def is_control_batch(self) -> bool:
        return bool(self._native.is_control_batch)

    @property
    def is_transactional(self) -> bool:
        return bool(self._native.is_transactional)

    def validate_crc(self) -> bool:
        return bool(self._native.validate_crc())

    def __getattr__(self, name: str) -> Any:  # the rest of the batch's interface
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._native, name)

    def __iter__(self) -> Iterator[Any]:
        if self._records is None:
            self._records = self._read()
        return self._records

    def __next__(self) -> Any:  # the fetcher reads a control batch's one record this way
        return next(iter(self))

    def _read(self) -> Iterator[Any]:
        read = 0
        try:
            for record in self._native:
                read += 1
                yield record
        except UnicodeDecodeError:
            _warn_lenient(self._native.base_offset)
            for index, record in enumerate(_LenientBatch(self._buffer)):
                if index >= read:
                    yield record


class _LenientMemoryRecords:
    """The fetcher's view of a fetched message set, its v2 batches read as :class:`_Batch`."""

    def __init__(self, data: bytes) -> None:
        self._records = _MemoryRecordsPy(data)

    def size_in_bytes(self) -> int:
        return int(self._records.size_in_bytes())

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> Any:
        buffer = self._records._next_slice
        batch = self._records.next_batch()
        if buffer is not None and isinstance(batch, DefaultRecordBatch):
            return _Batch(buffer, batch)
        return batch  # None, or a legacy (v0/v1) batch, which has no headers


_installed = False


def install_lenient_header_names() -> None:
    """Make every aiokafka consumer of this process survive a header name that is not UTF-8.

    Idempotent.  Patches one name in aiokafka's fetcher; ``tests/integration/
    test_header_names.py`` proves it against the real broker for the pinned aiokafka.
    """
    global _installed  # noqa: PLW0603 - a process-wide patch, applied once
    if _installed:
        return
    fetcher.MemoryRecords = _LenientMemoryRecords
    _installed = True
