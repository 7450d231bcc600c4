"""Records of the readings topic applied through a poison-record boundary.

:class:`Processor` is the worker without Faust: :meth:`Processor.process` applies one record
(:class:`~stream_apps.processing.applying.Applier`, after repairing a restored state that
misses records), :meth:`Processor.flush` writes the effects of a batch of them.

**The boundary.**  Any exception of a record that is not an infrastructure failure sends the
record to the dead-letter topic (reason ``internal_error``, stage ``worker``), counts and
logs it, and records its offset as handled in the partition state (so the gap check never
takes it for a lost record); the batch goes on.  The dead letter goes out with the batch's
outputs, on the producer Faust flushes before every offset commit.

**No partial effect.**  The engine mutates the states it is given, and the state store keeps
the changed ones across the records of a batch, so a record that fails half way may have
changed some (readings counted before the one that raised, an alert state stepped).
Copying the states before every record would cost on every record, for the rare one that
fails.  Instead the records applied since the last flush are kept (``_journal``, decoded, in
order), and after a failure everything not written yet is dropped and they are applied
again: the tables still hold the states of the last flush, and the engine is deterministic
given the records in order (the clock only stamps ``decided_at``/``updated_at``, and nothing
of the first application has left the process).  The records before the failed one keep
their effect exactly once, it has none, the ones after it are applied normally.  A failure
while the batch is written cannot be traced to a record directly: the batch is then applied
and written again one record at a time (:meth:`Processor.stage`).

**The repair** (records missing from a restored state, :mod:`~stream_apps.processing.repair`)
applies each record through the same boundary.  One that fails is skipped and counted, not
dead-lettered again: it lies before the record being handled, so the worker was delivered
it and handled it before, dead-lettering it then (and the offset only moved past it once
that dead letter was in Kafka).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from schemas.deadletters import DeadLetterReason, DeadLetterRecord, Stage, dead_letter
from schemas.readings import ReadingBatch
from schemas.topics import topic_name
from stream_apps.processing.applying import NOTHING, Applier
from stream_apps.processing.engine import PartitionState, SensorState
from stream_apps.processing.failures import is_infrastructure
from stream_apps.processing.pacing import RunningPacer
from stream_apps.processing.repair import ReadRange, stale_from

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Step:
    """A record as the current batch handled it: applied, or (``batch`` None) only recorded
    as handled.  ``value``/``key``: the original record, for its dead letter; None for a
    record re-read by a repair."""

    partition: int
    offset: int
    timestamp: float
    batch: ReadingBatch | None
    value: bytes | None = None
    key: bytes | None = None


class Processor:
    """:meth:`process` per record, then :meth:`flush` per batch; :meth:`reset` after
    anything else interrupted a batch.  Not thread-safe; one per worker process."""

    def __init__(self, applier: Applier, *, topic_prefix: str, read_range: ReadRange) -> None:
        self.applier = applier
        self.sender = applier.sender
        self.metrics = applier.metrics
        self.readings_topic = topic_name("readings", topic_prefix)
        self.dead_letter_topic = topic_name("dead_letters", topic_prefix)
        self._read_range = read_range
        self._journal: list[Step] = []  # handled since the last flush, in order
        self._dead_letters: list[DeadLetterRecord] = []  # not handed to the sender yet

    # -- per record ----------------------------------------------------------------------
    def process(
        self, partition: int, offset: int, timestamp: float, key: bytes | None, value: bytes
    ) -> None:
        """Apply one record (its effects are written by the next :meth:`flush`).

        On any exception that is not an infrastructure failure the record is dead-lettered
        with no effect on the state, as the module's docstring describes.  Raises
        infrastructure failures, and what fails while a failed record is recorded as
        handled (its partition state cannot be read or written): the batch must then not
        be acknowledged."""
        try:
            try:
                batch = ReadingBatch.model_validate_json(value)
            except ValueError as exc:  # not a ReadingBatch: nothing applied yet
                self._catch_up(partition, offset, NOTHING)
                self._refuse(Step(partition, offset, timestamp, None, value, key), exc)
                return
            pstate, states = self._catch_up(partition, offset, batch)
            self.applier.apply(partition, offset, timestamp, batch, pstate, states)
            self._journal.append(Step(partition, offset, timestamp, batch, value, key))
        except Exception as exc:  # the boundary: this record, not the worker
            if is_infrastructure(exc):
                raise
            self._rebuild()
            self._refuse(Step(partition, offset, timestamp, None, value, key), exc)

    def _catch_up(
        self, partition: int, offset: int, batch: ReadingBatch
    ) -> tuple[PartitionState, dict[str, SensorState]]:
        """The loaded states ``batch`` involves, after re-applying the records the restored
        state is missing."""
        pstate, states = self.applier.load(partition, batch)
        start = stale_from(pstate, states, batch, offset)
        if start is None or start >= offset:
            return pstate, states
        self._repair(partition, start, offset)
        return self.applier.load(partition, batch)

    def _repair(self, partition: int, start: int, end: int) -> None:
        """Re-apply records ``start`` .. ``end - 1`` of a partition, read from Kafka."""
        missing = self._read_range(partition, start, end)
        self.metrics.gaps.inc()
        log.warning(
            "partition %d: state restored older than offset %d; re-applying"
            " %d records from offset %d",
            partition,
            end,
            len(missing),
            start,
        )
        applier = self.applier
        for offset, timestamp, value in missing:
            try:
                batch = ReadingBatch.model_validate_json(value)
                applier.apply(partition, offset, timestamp, batch, *applier.load(partition, batch))
                self._journal.append(Step(partition, offset, timestamp, batch))
            except Exception as exc:  # the boundary, for a repaired record
                if is_infrastructure(exc):
                    raise
                self._rebuild()
                self._skip_repaired(Step(partition, offset, timestamp, None), exc)

    # -- failures ------------------------------------------------------------------------
    def _refuse(self, step: Step, exc: BaseException) -> None:
        """Record ``step``'s record as handled with no effect, and dead-letter it."""
        self.applier.mark(step.partition, step.offset)
        self._journal.append(Step(step.partition, step.offset, step.timestamp, None))
        reason = DeadLetterReason.INTERNAL_ERROR
        self.metrics.dead_letters.labels(reason.value).inc()
        log.error(
            "record %s[%d]@%d failed (%s: %s); sent to the dead-letter topic",
            self.readings_topic,
            step.partition,
            step.offset,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        self._dead_letters.append(
            dead_letter(
                reason=reason,
                stage=Stage.WORKER,
                detail=f"{type(exc).__name__}: {exc}",
                payload=step.value,
                key=step.key,
                origin_topic=self.readings_topic,
                origin_partition=step.partition,
                origin_offset=step.offset,
                error=exc,
            )
        )

    def _skip_repaired(self, step: Step, exc: BaseException) -> None:
        """Record a repaired record that failed again as handled (it was dead-lettered when
        it was first handled)."""
        self.applier.mark(step.partition, step.offset)
        self._journal.append(Step(step.partition, step.offset, step.timestamp, None))
        self.metrics.repair_rejects.inc()
        log.error(
            "partition %d: record at offset %d failed again while the state was repaired"
            " (%s: %s); skipped (it was dead-lettered when first handled)",
            step.partition,
            step.offset,
            type(exc).__name__,
            exc,
        )

    def _run(self, step: Step) -> None:
        """Apply a step again, as it was applied the first time (without repairing)."""
        applier = self.applier
        if step.batch is None:
            applier.mark(step.partition, step.offset)
        else:
            pstate, states = applier.load(step.partition, step.batch)
            applier.apply(step.partition, step.offset, step.timestamp, step.batch, pstate, states)

    def _rebuild(self) -> None:
        """Drop what the records since the last flush did, and apply them again."""
        self.applier.drop()
        with self.applier.not_counting():
            for step in self._journal:
                self._run(step)

    def reset(self) -> None:
        """Forget everything not written yet, after a batch was interrupted (its records
        are delivered again and processed anew)."""
        self.applier.drop()
        self.applier.pacer.clear()
        self._journal.clear()
        self._dead_letters.clear()

    # -- per batch -----------------------------------------------------------------------
    async def flush(self) -> None:
        """Write the changed states (changelog) and the outputs and dead letters of the
        records processed since the last flush, as one record batch per topic partition.

        Raises only infrastructure failures (the batch must then not be acknowledged)."""
        self.stage()
        await self.sender.send()

    def stage(self) -> None:
        """Store the changed states in their tables and hand them (changelog records), the
        outputs and the dead letters to the sender: what :meth:`flush` sends.

        If that fails (not for an infrastructure failure), the records since the last
        flush are applied and staged again one at a time, and a record whose effects fail
        to stage is dead-lettered instead.  Raises what fails for no record in particular."""
        try:
            self._stage()
        except Exception as exc:  # the boundary: find the record at fault
            if is_infrastructure(exc):
                raise
            self._isolate(exc)

    def _stage(self) -> None:
        self.applier.stage()  # stages nothing if it raises
        for letter in self._dead_letters:
            self.sender.add(self.dead_letter_topic, 0, letter.key, letter.value, letter.headers)
        self._dead_letters.clear()
        self._journal.clear()

    def _isolate(self, exc: BaseException) -> None:
        """Apply and stage the records since the last flush one at a time, after staging
        them together failed with ``exc``; refuse the ones whose effects fail."""
        log.error(
            "writing the effects of %d records failed (%s: %s); writing them one at a time",
            len(self._journal),
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        applier = self.applier
        steps, self._journal = self._journal, []
        applier.drop()
        # Held running aggregates are forgotten (the next change or the final sends the
        # hour again), and none is held while isolating, so that staging fails for the
        # record that makes it fail, not for a later one.
        applier.pacer.clear()
        pacer, applier.pacer = applier.pacer, RunningPacer(0)
        try:
            with applier.not_counting():
                for step in steps:
                    self._run(step)
                    mark = self.sender.mark()
                    try:
                        self._stage()
                    except Exception as failed:  # the boundary, per record
                        if is_infrastructure(failed) or step.batch is None:
                            raise
                        applier.drop(since=mark)
                        if step.value is None:
                            self._skip_repaired(step, failed)
                        else:
                            self._refuse(step, failed)
                        self._stage()
        finally:
            applier.pacer = pacer
