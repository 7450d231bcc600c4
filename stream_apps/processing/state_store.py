"""Decoded table values, written back once per batch of records.

The worker's tables hold our own JSON (pydantic models, stored as bytes).  Decoding a sensor
state per record and encoding it back per record was a quarter of the worker's time, and each
write was a changelog message of its own.  :class:`StateStore` keeps:

* the decoded value next to the very bytes object it was decoded from.  A hit requires the
  table to still hold that object: after a restore from the changelog (or anything else that
  replaced the value) the identity check fails and the value is decoded again;
* the values changed since the last :meth:`write` (``dirty``).  Reads see them first, so a
  batch of records can update a state several times and write it once.

:meth:`write` sets the table values without Faust's per-key changelog send and queues the
changelog records (partition = the input record's, as Faust's own ``__setitem__`` does) on
the :class:`~stream_apps.processing.batches.BatchSender`, to go out in one record batch with
the outputs; a value marked deleted (:meth:`delete`) goes out as a tombstone.  The engine
mutates the values it gets, so after a failure half way through a batch everything cached
is dropped (:meth:`drop`) and read from the tables again: the tables themselves only ever
hold what a successful :meth:`write` put there.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Protocol, TypeVar

from pydantic import BaseModel

from stream_apps.processing.batches import BatchSender

M = TypeVar("M", bound=BaseModel)


class Table(Protocol):
    """A table of bytes keyed by bytes, backed by a changelog topic
    (:class:`~stream_apps.processing.faust_glue.FaustTable` for the worker's tables)."""

    @property
    def name(self) -> str: ...

    def get(self, key: bytes) -> bytes | None: ...

    def storage(self) -> MutableMapping[bytes, bytes]:
        """Where the values are kept; assigning to it writes no changelog record."""
        ...

    def changelog(self) -> str:
        """The changelog topic's name."""
        ...


class StateStore:
    def __init__(self) -> None:
        self._decoded: dict[tuple[str, bytes], tuple[bytes, BaseModel]] = {}
        self._dirty: dict[tuple[str, bytes], tuple[Table, int, BaseModel | None]] = {}

    def get(self, table: Table, key: bytes, model: type[M]) -> M | None:
        slot = (table.name, key)
        dirty = self._dirty.get(slot)
        if dirty is not None:
            return dirty[2]  # type: ignore[return-value]  # None: deleted
        stored = table.get(key)
        if not stored:
            return None
        hit = self._decoded.get(slot)
        if hit is not None and hit[0] is stored:
            return hit[1]  # type: ignore[return-value]
        value = model.model_validate_json(stored)
        self._decoded[slot] = (stored, value)
        return value

    def put(self, table: Table, partition: int, key: bytes, value: BaseModel) -> None:
        """Mark ``value`` as the table's new value for ``key`` (written by :meth:`write`)."""
        self._dirty[(table.name, key)] = (table, partition, value)

    def delete(self, table: Table, partition: int, key: bytes) -> None:
        """Mark ``key`` as deleted from the table (a tombstone, written by :meth:`write`)."""
        self._dirty[(table.name, key)] = (table, partition, None)

    def write(self, sender: BatchSender) -> None:
        """Store every changed value in its table and queue its changelog record.

        All values are encoded before the first is stored: if encoding one raises, no
        table has changed (and the changes are still pending, for :meth:`drop`)."""
        encoded: list[tuple[tuple[str, bytes], Table, int, bytes | None, BaseModel | None]] = []
        for slot, (table, partition, value) in self._dirty.items():
            stored = None if value is None else value.model_dump_json().encode()
            encoded.append((slot, table, partition, stored, value))
        self._dirty = {}
        # Resolved once per table and write, not per value.
        targets: dict[str, tuple[MutableMapping[bytes, bytes], str]] = {}
        for slot, table, partition, stored, value in encoded:
            target = targets.get(slot[0])
            if target is None:
                target = targets[slot[0]] = (table.storage(), table.changelog())
            storage, changelog = target
            sender.add(changelog, partition, slot[1], stored)
            if stored is None:
                storage.pop(slot[1], None)
                self._decoded.pop(slot, None)
            else:
                storage[slot[1]] = stored  # the store itself: no per-key changelog send
                self._decoded[slot] = (stored, value)  # type: ignore[assignment]

    def drop(self) -> None:
        """Forget every cached and every pending value (the engine may have changed them)."""
        self._decoded.clear()
        self._dirty.clear()
