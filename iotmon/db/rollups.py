"""Bring the daily and monthly rollups (TimescaleDB continuous aggregates, migration 012) up
to date after a change that their real-time part does not cover: hours of an earlier UTC day
written by the aggregates sink, or locations moved or deleted (the floor rollup of their past
hours changed).  Plain functions over a connection; nothing to do on plain PostgreSQL.

``refresh_continuous_aggregate`` commits on its own, so it cannot run inside a transaction
block or a function: it is called from here, one statement per rollup, dailies first (the
monthlies are computed from them).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from iotmon.settings import DatabaseSettings

log = logging.getLogger(__name__)

DAILIES = ("loc_daily", "floor_daily")
MONTHLIES = ("loc_monthly", "floor_monthly")


def _month(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next_month(at: datetime) -> datetime:
    first = _month(at)
    return (first + timedelta(days=32)).replace(day=1)


def windows(
    start: datetime | None, end: datetime | None, now: datetime
) -> tuple[tuple[datetime | None, datetime], tuple[datetime | None, datetime] | None]:
    """The refresh windows (dailies, monthlies) for changes between ``start`` and ``end``
    (None: unbounded): the whole months that hold them, up to the current UTC day for the
    dailies and the current month for the monthlies, which stay real-time.  None for the
    monthlies when nothing before the current month changed."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    month = _month(now)
    first = _month(start) if start is not None else None
    last = _next_month(end) if end is not None else None
    daily = (first, min(last, today) if last is not None else today)
    monthly_end = min(last, month) if last is not None else month
    monthly = (first, monthly_end) if first is None or first < monthly_end else None
    return daily, monthly


def refresh(
    conn: psycopg.Connection[Any],
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    now: datetime | None = None,
    patience_s: float = 10.0,
) -> list[str]:
    """Refresh the rollups of the schema on ``conn``'s search path for changes between
    ``start`` and ``end``; ``conn`` must be in autocommit mode.  Returns the rollups
    refreshed (none on plain PostgreSQL or before migration 012).  A refresh of the same
    rollup running elsewhere (its policy, another sink) is waited for, up to ``patience_s``
    per rollup; then LockNotAvailable is raised."""
    row = conn.execute(
        "SELECT n.nspname, now(), current_schema() FROM pg_extension e"
        " JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'timescaledb'"
    ).fetchone()
    if row is None:
        return []
    extension, db_now, schema = str(row[0]), row[1], str(row[2])
    present = {
        str(r[0])
        for r in conn.execute(
            "SELECT view_name FROM timescaledb_information.continuous_aggregates"
            " WHERE view_schema = current_schema()"
        )
    }
    # "Now" is the database's clock: the same for every sink replica and the policies.
    daily, monthly = windows(start, end, now or db_now)
    done: list[str] = []
    for views, window in ((DAILIES, daily), (MONTHLIES, monthly)):
        if window is None or (window[0] is not None and window[0] >= window[1]):
            continue
        for view in views:
            if view not in present:
                continue
            _refresh_one(conn, extension, schema, view, window, patience_s)
            done.append(view)
    return done


_PENDING = (
    "SELECT min(l.lowest_modified_value), max(l.greatest_modified_value)"
    " FROM _timescaledb_catalog.continuous_aggs_materialization_invalidation_log l"
    " JOIN _timescaledb_catalog.continuous_agg c ON c.mat_hypertable_id = l.materialization_id"
    " WHERE c.user_view_schema = %s AND c.user_view_name = %s"
    " AND l.greatest_modified_value >= %s AND l.lowest_modified_value < %s"
    # Not the markers of the never-materialized ends (before any timestamp, or after now).
    " AND l.greatest_modified_value >= -210866803200000000"
)
_MIN_US, _MAX_US = -(2**63), 2**63 - 1
_EARLIEST_US = int(datetime(1, 1, 2, tzinfo=UTC).timestamp() * 1_000_000)


def _us(at: datetime | None, default: int) -> int:
    return default if at is None else int(at.timestamp() * 1_000_000)


def _refresh_one(
    conn: psycopg.Connection[Any],
    extension: str,
    schema: str,
    view: str,
    window: tuple[datetime | None, datetime],
    patience_s: float,
) -> None:
    """Refresh ``view`` over ``window`` until no change inside it is left pending.

    TimescaleDB materializes a bounded number of invalidated ranges per refresh and leaves
    the others pending: over months of scattered late hours one refresh left buckets
    stale.  So the changes still pending inside the window are refreshed again, their span
    at a time, until none is left (a bounded number of rounds)."""
    name = sql.Identifier(schema, view).as_string(conn)
    monthly = view in MONTHLIES
    low, high = window
    for _ in range(50):
        _call_refresh(conn, extension, name, (low, high), patience_s)
        row = conn.execute(
            _PENDING, (schema, view, _us(window[0], _MIN_US), _us(window[1], _MAX_US))
        ).fetchone()
        if row is None or row[0] is None:
            return
        first = max(row[0], _us(window[0], _MIN_US))
        last = min(row[1], _us(window[1], _MAX_US) - 1)
        low = (
            None
            if first < _EARLIEST_US
            else _bucket_start(datetime.fromtimestamp(first / 1_000_000, UTC), monthly)
        )
        high = min(_bucket_after(datetime.fromtimestamp(last / 1_000_000, UTC), monthly), window[1])
    log.warning("%s: changes still pending after 50 refreshes; its policy will go on", view)


def _bucket_start(at: datetime, monthly: bool) -> datetime:
    return _month(at) if monthly else at.replace(hour=0, minute=0, second=0, microsecond=0)


def _bucket_after(at: datetime, monthly: bool) -> datetime:
    return _next_month(at) if monthly else _bucket_start(at, False) + timedelta(days=1)


def _call_refresh(
    conn: psycopg.Connection[Any],
    extension: str,
    name: str,
    window: tuple[datetime | None, datetime],
    patience_s: float,
) -> None:
    # TimescaleDB refuses a refresh while another one of the same rollup runs, rather than
    # waiting; the other one may have started before our change, so ours must still run.
    deadline = time.monotonic() + patience_s
    pause = 0.05
    statement = sql.SQL(
        "CALL {}.refresh_continuous_aggregate(%s::regclass, %s::timestamptz, %s::timestamptz)"
    ).format(sql.Identifier(extension))
    while True:
        try:
            conn.execute(statement, (name, window[0], window[1]))
            return
        except psycopg.errors.LockNotAvailable:
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


def refresh_all(db: DatabaseSettings) -> list[str]:
    """Refresh every pending change of the schema of ``db``, on a connection of its own.
    For callers whose change is already committed: a failure is logged, not raised (the
    rollups' refresh policy catches up)."""
    try:
        with psycopg.connect(db.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(db.db_schema)))
            return refresh(conn)
    except psycopg.Error as exc:
        log.warning("daily and monthly rollups not refreshed (their policy will): %s", exc)
        return []
