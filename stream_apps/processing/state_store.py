"""Decoded Faust table values, written back once per batch of records.

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
is dropped (:meth:`drop`) and read from the tables again.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from stream_apps.processing.batches import BatchSender

M = TypeVar("M", bound=BaseModel)


class StateStore:
    def __init__(self) -> None:
        self._decoded: dict[tuple[str, bytes], tuple[bytes, BaseModel]] = {}
        self._dirty: dict[tuple[str, bytes], tuple[Any, int, BaseModel | None]] = {}

    def get(self, table: Any, key: bytes, model: type[M]) -> M | None:
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

    def put(self, table: Any, partition: int, key: bytes, value: BaseModel) -> None:
        """Mark ``value`` as the table's new value for ``key`` (written by :meth:`write`)."""
        self._dirty[(table.name, key)] = (table, partition, value)

    def delete(self, table: Any, partition: int, key: bytes) -> None:
        """Mark ``key`` as deleted from the table (a tombstone, written by :meth:`write`)."""
        self._dirty[(table.name, key)] = (table, partition, None)

    def write(self, sender: BatchSender) -> None:
        dirty, self._dirty = self._dirty, {}
        for slot, (table, partition, value) in dirty.items():
            if value is None:
                table.data.pop(slot[1], None)
                sender.add(table.changelog_topic.get_topic_name(), partition, slot[1], None)
                self._decoded.pop(slot, None)
                continue
            stored = value.model_dump_json().encode()
            table.data[slot[1]] = stored  # the store itself: no per-key changelog send
            sender.add(table.changelog_topic.get_topic_name(), partition, slot[1], stored)
            self._decoded[slot] = (stored, value)

    def drop(self) -> None:
        self._decoded.clear()
        self._dirty.clear()
