"""How often the running (not yet final) aggregate of a sensor-hour goes out.

A running hourly aggregate is a snapshot: a newer one of the same sensor-hour says all an
older one did.  Sent on every change, a plant of sensors reading once a second put one per
reading on the aggregates topic, and one upsert per reading (with its floor rollup) into
PostgreSQL: as many messages as the readings themselves, for numbers nobody reads at that
rate.  :class:`RunningPacer` lets the first change of a sensor-hour go out at once and the
later ones at most every ``every_s`` seconds: a change inside that time is held, and the
newest held one goes out with the first batch of records after it is due (ticks keep
batches coming at least every ``tick_interval_s``).  So the database is never more than
``every_s`` plus a tick behind the worker, and at one reading a second ``every_s = 5``
sends a fifth of the messages.

Never held: a final (closing an hour always goes out, it is not built here) and a revised
final (a window closed by the idle clock that got more readings).  An hour finalized while
a change was held drops it: the final said everything.  Held snapshots live only in memory;
after a crash the next reading of the hour, or its final, brings the database up to date.
Held snapshots of sensors whose partition this worker no longer owns are forgotten
(:meth:`RunningPacer.forget`), so that a stale one cannot overwrite the new owner's.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping

from stream_apps.processing.engine import HourKey, OpenHour


class RunningPacer:
    def __init__(self, every_s: float) -> None:
        self.every = every_s
        self._sent: dict[HourKey, float] = {}  # when each open hour's snapshot last went out
        self._held: dict[HourKey, tuple[float, OpenHour]] = {}  # due time, newest snapshot
        self._due: list[tuple[float, HourKey]] = []  # heap of (due time, hour) of held ones

    def release(
        self, changed: Mapping[HourKey, OpenHour], finalized: Iterable[HourKey], now: float
    ) -> dict[HourKey, OpenHour]:
        """The open hours whose running aggregate goes out now (``now``: a monotonic clock,
        in seconds), of those ``changed`` by a batch of records and those held before.
        ``finalized``: hours whose final went out with the batch."""
        for key in finalized:
            self._sent.pop(key, None)
            self._held.pop(key, None)
        out: dict[HourKey, OpenHour] = {}
        for key, hour in changed.items():
            last = self._sent.get(key)
            if hour[1].final_sent or last is None or now - last >= self.every:
                out[key] = hour
                self._sent[key] = now
                self._held.pop(key, None)
            else:
                held = self._held.get(key)
                due = held[0] if held else last + self.every
                if held is None:
                    heapq.heappush(self._due, (due, key))
                self._held[key] = (due, hour)
        while self._due and self._due[0][0] <= now:
            due, key = heapq.heappop(self._due)
            held = self._held.get(key)
            if held is None or held[0] != due:  # sent, dropped or held anew since
                continue
            del self._held[key]
            out[key] = held[1]
            self._sent[key] = now
        return out

    def forget(self, keep: Callable[[str], bool]) -> None:
        """Forget the hours of the sensors ``keep`` rejects (their partition went to another
        worker)."""
        for table in (self._sent, self._held):
            for key in [k for k in table if not keep(k[0])]:
                del table[key]

    def clear(self) -> None:
        self._sent.clear()
        self._held.clear()
        self._due.clear()

    @property
    def held(self) -> int:
        return len(self._held)
