"""Which version of this deployment's realtime data the API has seen.

Migration 008 makes PostgreSQL send a notification on ``iotmon_data_changed`` (payload: the
schema) whenever a transaction that changed the latest readings or the locations commits;
migration 009 one on ``iotmon_rows_changed`` when it changed *which* rows an answer holds
(a sensor's first row, a row at another location, deleted rows, the locations).
:class:`DataChanges` listens on one connection of its own and counts those notifications for
our schema (:attr:`~DataChanges.version` all of them, :attr:`~DataChanges.rows_version` the
second kind).  A rendered answer is reusable while the count it was rendered at is still the
current one, so a new reading is visible as soon as its transaction commits.

While the listening connection is down (PostgreSQL restarting, network), nothing is known to
be unchanged: :attr:`DataChanges.listening` is false and callers render every answer afresh.
Database and network errors are retried; anything else is a bug and ends the listener (the
API keeps answering, without reuse, and logs it).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg

log = logging.getLogger(__name__)

CHANNEL = "iotmon_data_changed"
ROWS_CHANNEL = "iotmon_rows_changed"


class DataChanges:
    """Counters bumped by the change notifications for ``schema``."""

    def __init__(
        self,
        url: str,
        schema: str,
        probe_every_s: float = 10.0,
        probe_timeout_s: float = 5.0,
        retry_min_s: float = 0.5,
        retry_max_s: float = 10.0,
    ) -> None:
        self.url = url
        self.schema = schema
        self.probe_every_s = probe_every_s
        self.probe_timeout_s = probe_timeout_s
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.version = 0  # every change
        self.rows_version = 0  # changes of which rows there are
        self.listening = False

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff after a lost connection."""
        delay = self.retry_min_s
        while True:
            try:
                # Keepalives: a connection that vanished without closing (failover, a
                # dropped NAT entry) is noticed in seconds, not after TCP's retransmissions.
                async with await psycopg.AsyncConnection.connect(
                    self.url,
                    autocommit=True,
                    keepalives=1,
                    keepalives_idle=10,
                    keepalives_interval=5,
                    keepalives_count=3,
                ) as conn:
                    await self._listen(conn)
            except (psycopg.Error, OSError) as exc:  # TimeoutError is an OSError
                if self.listening:
                    log.warning("change notifications lost (%s); answers are not reused", exc)
                    delay = self.retry_min_s
                else:
                    log.warning("cannot listen for change notifications: %s", exc)
            finally:
                self._stop_listening()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_s)

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(f"LISTEN {CHANNEL}; LISTEN {ROWS_CHANNEL}")
        # Anything may have changed while nobody listened.
        self.changed()
        self.listening = True
        log.info("listening for change notifications")
        while True:
            async for notify in conn.notifies(timeout=self.probe_every_s):
                if notify.payload == self.schema:
                    if notify.channel == ROWS_CHANNEL:
                        self.rows_version += 1
                    self.version += 1
            # A connection that went away without closing its socket shows up here.
            await asyncio.wait_for(conn.execute("SELECT 1"), self.probe_timeout_s)

    def changed(self) -> None:
        """A change this process made itself: answers rendered before it are not reused,
        even before its notification arrives (read your own writes)."""
        self.version += 1
        self.rows_version += 1

    def _stop_listening(self) -> None:
        self.listening = False
        self.changed()
