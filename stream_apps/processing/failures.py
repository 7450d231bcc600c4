"""The worker's two kinds of failure, and how it stops on the second.

* **A record the worker fails on** (bytes that are not a ``ReadingBatch``, or a valid-looking
  record the engine raises on): no retry will fix it.  It goes to the dead-letter topic and
  the worker goes on (:mod:`stream_apps.processing.processor`).
* **An infrastructure failure** (:func:`is_infrastructure`: Kafka unreachable, a request
  timing out, Kafka refusing an output): the records are fine, the worker is not.  It must
  not acknowledge anything it has not applied and written, so it stops at once
  (:func:`fail_stop`), and the supervisor restarts it; the records after the last commit
  are read again then.

Why the process ends abruptly rather than through Faust's shutdown: when an agent's body
raises, Faust restarts the agent with a new batch generator, and the old one, collected,
acknowledges the events of the failed batch, applied or not; its next commit then moves
the offsets past them (``Stream.take_events`` acknowledges in a ``finally``, and
``App._on_agent_error`` commits at once).  A graceful stop commits the acknowledged
offsets too.  ``os._exit`` leaves nothing to run: no acknowledgement, no commit, no flush of
pending outputs, exactly as a SIGKILL, which the restart drills cover.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

from aiokafka.errors import KafkaError
from confluent_kafka import KafkaException

log = logging.getLogger(__name__)

# EX_TEMPFAIL (sysexits.h): a temporary failure, to be retried by restarting the process.
EXIT_INFRASTRUCTURE = 75


class InfrastructureError(Exception):
    """Kafka did not do what the worker needs; the records involved are not at fault."""


class OutputRefused(InfrastructureError):
    """Kafka refused a record batch of the worker's outputs (or dead letters)."""


class RepairIncomplete(InfrastructureError):
    """The records of a state repair could not all be read back from Kafka in time."""


# Exceptions that mean a service is unavailable or refusing, never that a record is bad.
# MemoryError too: no record is at fault, and the process is in no state to go on.
INFRASTRUCTURE: tuple[type[BaseException], ...] = (
    InfrastructureError,
    KafkaError,  # aiokafka: connection, timeout, refused request, closed producer
    KafkaException,  # confluent-kafka: the master-data views and the repair reader
    ConnectionError,
    TimeoutError,
    MemoryError,
)


def is_infrastructure(exc: BaseException) -> bool:
    """True if ``exc`` (or an exception it was raised from) is an infrastructure failure."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, INFRASTRUCTURE):
            return True
        seen = seen.__cause__
    return False


def fail_stop(exc: BaseException, doing: str) -> NoReturn:
    """Log ``exc`` and end the process at once with :data:`EXIT_INFRASTRUCTURE`.

    Nothing runs after it in this process: no event is acknowledged and no offset committed,
    so every record after the last commit is read again by the restarted worker."""
    log.critical(
        "%s failed (%s: %s); stopping the worker at once, without acknowledging anything,"
        " for the supervisor to restart it",
        doing,
        type(exc).__name__,
        exc,
        exc_info=exc,
    )
    logging.shutdown()  # flush the handlers: os._exit does not
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_INFRASTRUCTURE)
