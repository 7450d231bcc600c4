"""Which failures mean "a service is unavailable" (retry), as opposed to "this record is bad".

The consumer loops keep the two kinds apart: a record that makes a write fail for what it
is (a value beyond its column, a NUL in a text column, an index row too large) is
dead-lettered, and retrying it would never succeed; a database or broker that is away, or a
deployment that is not ready (a table missing, no privilege, a read-only standby), is waited
for, and dead-lettering would throw good records away.  Exception classes alone do not say
which: psycopg raises ``OperationalError`` both for a lost connection and for "index row size
exceeds maximum" (SQLSTATE 54000), so PostgreSQL errors are told apart by SQLSTATE.
"""

from __future__ import annotations

import psycopg
from confluent_kafka import KafkaException

from producers.kafka import refused_record

# SQLSTATE classes of a server, connection or deployment problem.
_UNAVAILABLE_CLASSES = frozenset(
    {
        "08",  # connection exception
        "53",  # insufficient resources (disk full, out of memory, too many connections)
        "57",  # operator intervention (shutdown, cannot connect now, query canceled)
        "58",  # system error (I/O)
        "3D",  # invalid catalog (database) name
        "3F",  # invalid schema name
        "40",  # transaction rollback (serialization failure, deadlock): try again
    }
)
_UNAVAILABLE_STATES = frozenset(
    {
        "25006",  # read-only transaction: a standby, or the database set read-only
        "42P01",  # undefined table: not migrated
        "42703",  # undefined column: not migrated
        "42883",  # undefined function: not migrated
        "42501",  # insufficient privilege: a deployment's roles
        "55P03",  # lock not available
    }
)


def database_unavailable(exc: BaseException) -> bool:
    """True for a PostgreSQL failure that is not the record's fault."""
    if isinstance(exc, psycopg.InterfaceError):
        return True  # the connection is closed or broken on our side
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:
        # No answer from the server at all (connection refused, timed out, lost).
        return isinstance(exc, psycopg.OperationalError)
    return state in _UNAVAILABLE_STATES or state[:2] in _UNAVAILABLE_CLASSES


def connection_lost(exc: BaseException) -> bool:
    """True when the connection itself is gone (closed on our side, refused, lost, or the
    server shutting down), as opposed to a statement the server refused."""
    if isinstance(exc, psycopg.InterfaceError):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state[:2] == "08" or state in ("57P01", "57P02", "57P03")


def kafka_unavailable(exc: BaseException) -> bool:
    """True for a Kafka failure that is not the record's fault."""
    return isinstance(exc, KafkaException) and not refused_record(exc)
