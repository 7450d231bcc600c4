"""The processing of one partition's records, as plain functions over plain state.

Faust (``stream_apps/processing/app.py``) only loads the states of the sensors a record
touches, calls :func:`apply_batch` or :func:`apply_tick`, stores the states back and sends
the outputs.  Everything here is deterministic given the records of a partition in order, so
re-processing after a crash decides the same things with the same ids.

Effectively-once: every sensor state remembers the offset of the last record applied to it.
A replayed record (offset not above it) is not applied again; instead the outputs that record
produced for that sensor (finals and alert events, kept in the state's outbox for a while) are
sent again, because the crash may have lost them after the state was saved.  The sinks store
each of them once (keys: sensor and hour; event id).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

from pydantic import BaseModel, Field

from schemas.aggregates import HourlyAggregate
from schemas.alerts import AlertEvent, AlertKind, AlertTransition
from schemas.common import METRICS, Status
from schemas.master import Location
from schemas.readings import Reading, SensorStatus
from stream_apps.processing.lifecycle import (
    NAMESPACE,
    MetricAlertState,
    Subject,
    event_id_for,
    step,
)
from stream_apps.processing.rules import BandSet, ThresholdIndex
from stream_apps.processing.windows import (
    SEAL_AT,
    ChunkLookup,
    HourWindow,
    WindowPolicy,
    local_hour,
)


class SeenChunk(BaseModel):
    """Capture instants of a sensor-hour, sealed out of its window (``HourWindow.seal``)
    and stored once under :attr:`key`; ``ms`` None deletes the chunk."""

    sensor_id: str
    hour_start: datetime
    index: int
    ms: frozenset[int] | None = None

    @property
    def key(self) -> bytes:
        return chunk_key(self.sensor_id, self.hour_start, self.index)


def chunk_key(sensor_id: str, hour_start: datetime, index: int) -> bytes:
    return f"{sensor_id}|{int(hour_start.timestamp())}|{index}".encode()


class OutboxEntry(BaseModel):
    offset: int
    created: datetime
    aggregates: list[HourlyAggregate] = Field(default_factory=list)
    alerts: list[AlertEvent] = Field(default_factory=list)
    chunks: list[SeenChunk] = Field(default_factory=list)  # sealed or deleted


class SensorState(BaseModel):
    sensor_id: str
    loc_id: str
    last_offset: int = -1
    windows: dict[datetime, HourWindow] = Field(default_factory=dict)
    closed_through: datetime | None = None  # newest hour finalized
    alerts: dict[str, MetricAlertState] = Field(default_factory=dict)
    last_seen: datetime | None = None  # record time of the last batch with this sensor
    last_capture: datetime | None = None
    silent_alert_id: UUID | None = None
    outbox: list[OutboxEntry] = Field(default_factory=list)
    # Closed hours whose sealed chunks are still stored: (hour start, chunks, closed at
    # tick time).  They are deleted OUTBOX_KEEP_S later, not at once, so a repair that
    # re-applies records from before the close still finds them.
    retired: list[tuple[datetime, int, datetime]] = Field(default_factory=list)


class PartitionState(BaseModel):
    watermark: datetime | None = None  # newest capture time seen in the partition
    last_data_at: datetime | None = None  # record time of the newest data batch
    sensors: set[str] = Field(default_factory=set)
    last_offset: int = -1  # newest record of the partition applied
    sensor_offsets: dict[str, int] = Field(default_factory=dict)  # last record per sensor


HourKey = tuple[str, datetime]  # a sensor and the start of one of its hours
OpenHour = tuple[SensorState, HourWindow]  # its state and that hour's window in it


def running_aggregates(hours: Mapping[HourKey, OpenHour], now: datetime) -> list[HourlyAggregate]:
    """The aggregates of ``hours`` as their windows count now (``now``: ``updated_at``);
    none for an hour closed for good since (its final said everything)."""
    return [
        window.aggregate(sid, state.loc_id, final=window.final_sent, now=now)
        for (sid, hour_start), (state, window) in hours.items()
        if state.windows.get(hour_start) is window
    ]


@dataclass
class Changed:
    """The open hours counted into and the newest status of each sensor.

    Their messages carry a state as it is when they are built (an hour's running totals, a
    sensor's newest reading), so however many records of a batch changed one, a single
    message per key, built after the last of them, says everything: :meth:`update` merges
    the changes of later records, :meth:`aggregates` and :meth:`statuses` build the
    messages (``now``: their ``updated_at``).  Building them per record was a fifth of the
    worker's time.
    """

    hours: dict[HourKey, OpenHour] = field(default_factory=dict)
    newest: dict[str, tuple[Reading, dict[str, Status | None]]] = field(default_factory=dict)
    finalized: set[HourKey] = field(default_factory=set)  # hours whose final went out

    def update(self, later: Outputs) -> None:
        """Add the changes of a later record.  An hour that record finalized from its
        current window needs nothing more: the final says everything counted so far."""
        for key in later.finalized:
            self.hours.pop(key, None)
            self.finalized.add(key)
        self.hours.update(later.changed.hours)
        self.newest.update(later.changed.newest)

    def aggregates(self, now: datetime) -> list[HourlyAggregate]:
        return running_aggregates(self.hours, now)

    def statuses(self, now: datetime) -> list[SensorStatus]:
        return [
            SensorStatus(
                sensor_id=sid,
                loc_id=reading.loc_id,
                capture_dt=reading.capture_dt,
                temperature=reading.temperature,
                humidity=reading.humidity,
                pcv_temperature=reading.pcv_temperature,
                pcv_computed=reading.pcv_computed,
                temperature_status=statuses["temperature"],
                humidity_status=statuses["humidity"],
                pcv_temperature_status=statuses["pcv_temperature"],
                updated_at=now,
            )
            for sid, (reading, statuses) in self.newest.items()
        ]

    def clear(self) -> None:
        self.hours.clear()
        self.newest.clear()
        self.finalized.clear()


@dataclass
class Outputs:
    # Decided in full when they are emitted: finals, and what an outbox re-sends.
    aggregates: list[HourlyAggregate] = field(default_factory=list)
    alerts: list[AlertEvent] = field(default_factory=list)
    late: list[Reading] = field(default_factory=list)
    # Running hours and latest statuses, built once per batch of records.
    changed: Changed = field(default_factory=Changed)
    # Sensor-hours whose final in ``aggregates`` was built now from the current window (not
    # re-sent from an outbox).
    finalized: list[HourKey] = field(default_factory=list)
    # Capture-instant chunks to store (sealed) or delete (``ms`` None).
    chunks: list[SeenChunk] = field(default_factory=list)

    def extend(self, entry: OutboxEntry) -> None:
        self.aggregates.extend(entry.aggregates)
        self.alerts.extend(entry.alerts)
        self.chunks.extend(entry.chunks)


@dataclass(frozen=True)
class Context:
    policy: WindowPolicy
    thresholds: ThresholdIndex
    location: Callable[[str], Location | None]
    silent_after: timedelta
    idle_after: timedelta
    outbox_keep: timedelta
    now: datetime  # wall clock: decided_at of alert events, updated_at of aggregates
    # The partition's committed offset, if known: records before it are never delivered
    # again, so their outbox entries can go (long before ``outbox_keep``).
    replay_from: int | None = None
    # The stored chunks of capture instants (None: no store; a window with sealed chunks
    # then refuses readings inside their ranges).
    seen_chunk: ChunkLookup | None = None
    seal_at: int = SEAL_AT  # capture instants per sealed chunk


def _record(
    state: SensorState,
    offset: int,
    ctx: Context,
    aggregates: list[HourlyAggregate],
    alerts: list[AlertEvent],
    chunks: list[SeenChunk] | None = None,
) -> None:
    """Keep this record's outputs for a replay, and drop what no replay can ask for.

    Without the pruning by committed offset, a sensor raising an event per reading carried
    ``outbox_keep`` worth of events in its state, re-serialised on every record."""
    if ctx.replay_from is not None and state.outbox:
        state.outbox = [e for e in state.outbox if e.offset >= ctx.replay_from]
    if aggregates or alerts or chunks:
        state.outbox.append(
            OutboxEntry(
                offset=offset,
                created=ctx.now,
                aggregates=aggregates,
                alerts=alerts,
                chunks=chunks or [],
            )
        )


def _replayed(state: SensorState, offset: int, out: Outputs) -> bool:
    """True if ``offset`` was applied to this sensor already (then its outputs are resent)."""
    if offset > state.last_offset:
        return False
    for entry in state.outbox:
        if entry.offset == offset:
            out.extend(entry)
    return True


class _Seals:
    """The chunks one record seals, kept per sensor for its outputs; and :attr:`lookup`,
    through which windows read sealed chunks, finding those sealed by this record before
    the chunk store has them."""

    def __init__(self, stored: ChunkLookup | None, at: int) -> None:
        self.at = at  # capture instants per chunk
        self.by_sensor: dict[str, list[SeenChunk]] = {}
        fresh: dict[tuple[str, datetime, int], frozenset[int]] = {}
        self._fresh = fresh

        def lookup(sid: str, hour_start: datetime, index: int) -> Collection[int]:
            found = fresh.get((sid, hour_start, index))
            if found is not None:
                return found
            if stored is None:
                raise ValueError("a window has sealed chunks but there is no chunk store")
            return stored(sid, hour_start, index)

        # A function kept in an attribute, not a method: reading a method would make a new
        # bound method for every reading that is counted.
        self.lookup: ChunkLookup = lookup

    def seal(self, sid: str, hour_start: datetime, window: HourWindow) -> None:
        """Seal the window's unsealed instants into a chunk if :attr:`at` of them are there."""
        due = window.seal(self.at)
        if due is not None:
            index, instants = due[0], frozenset(due[1])
            self._fresh[(sid, hour_start, index)] = instants
            self.by_sensor.setdefault(sid, []).append(
                SeenChunk(sensor_id=sid, hour_start=hour_start, index=index, ms=instants)
            )


def apply_batch(
    partition: PartitionState,
    states: dict[str, SensorState],
    readings: list[Reading],
    offset: int,
    record_time: datetime,
    ctx: Context,
) -> Outputs:
    """Apply a batch of readings (record ``offset`` of the partition).

    Each reading is counted into its sensor's open hour (or listed as late), and steps its
    sensor's alerts.  A sensor that had this record applied before is left as it is, and
    the outputs its outbox kept for the record are sent again instead.
    """
    out = Outputs()
    watermark = partition.watermark  # lateness is judged against the watermark before
    touched: dict[str, set[datetime]] = {}  # sensors applied to: the open hours counted into
    skipped: set[str] = set()  # sensors that had this record before: a replay
    new_alerts: dict[str, list[AlertEvent]] = {}
    seals = _Seals(ctx.seen_chunk, ctx.seal_at)
    newest = out.changed.newest
    # Looked up once per call: this loop runs per reading.
    band_sets, location_of, now = ctx.thresholds.band_sets, ctx.location, ctx.now
    default_zone, grace_end = ctx.policy.timezone, ctx.policy.closes_at
    for reading in readings:
        sid = reading.sensor_id
        state = states.get(sid)
        if state is None:
            state = states[sid] = SensorState(sensor_id=sid, loc_id=reading.loc_id)
        hours = touched.get(sid)
        if hours is None:  # the sensor's first reading in this record
            if sid in skipped or _replayed(state, offset, out):
                skipped.add(sid)
                continue
            hours = touched[sid] = set()
        capture = reading.capture_dt
        if state.loc_id != reading.loc_id:
            state.loc_id = reading.loc_id
        location = location_of(sid)
        hour = local_hour(capture, location.timezone if location is not None else default_zone)
        hour_start = hour[0]
        # Late: the hour closed by the watermark, or the sensor's hours through it were
        # finalized for good (their windows are gone).
        if (watermark is not None and grace_end(hour_start) <= watermark) or (
            state.closed_through is not None and hour_start <= state.closed_through
        ):
            out.late.append(reading)
        elif _count(state, reading, hour, seals):
            hours.add(hour_start)
        statuses = _step_alerts(state, reading, band_sets(location), now, new_alerts)
        if state.last_capture is None or capture >= state.last_capture:
            state.last_capture = capture
            newest[sid] = (reading, statuses)
        if state.last_seen is None or state.last_seen < record_time:
            state.last_seen = record_time
    _record_touched(partition, states, touched, new_alerts, seals.by_sensor, offset, ctx, out)
    _advance_clocks(partition, readings, record_time)
    return out


def _count(
    state: SensorState, reading: Reading, hour: tuple[datetime, str, str], seals: _Seals
) -> bool:
    """Count ``reading`` into the window of its ``hour`` (as :func:`local_hour` gives it),
    opened if need be, and seal the window's instants once enough are unsealed.  False if
    the window counted that reading before."""
    hour_start = hour[0]
    window = state.windows.get(hour_start)
    if window is None:
        window = state.windows[hour_start] = HourWindow(
            hour_start=hour_start, ymd=hour[1], hour=hour[2]
        )
    if not window.add(reading, seals.lookup):
        return False
    if len(window.seen_ms) >= seals.at:
        seals.seal(reading.sensor_id, hour_start, window)
    return True


def _step_alerts(
    state: SensorState,
    reading: Reading,
    bands: tuple[BandSet, ...],
    now: datetime,
    new_alerts: dict[str, list[AlertEvent]],
) -> dict[str, Status | None]:
    """The status of each metric of the reading by ``bands`` (in ``METRICS`` order).

    Steps each metric's alert with the reading and resolves the sensor's silent alert, if
    one is raised; the events they cause are appended to ``new_alerts[sensor_id]``.
    """
    sid, capture = reading.sensor_id, reading.capture_dt
    statuses: dict[str, Status | None] = {}
    alert_states = state.alerts
    for metric, metric_bands in zip(METRICS, bands, strict=True):
        value = getattr(reading, metric)
        evaluation = metric_bands.evaluate(value)
        statuses[metric] = evaluation.status
        alert_state = alert_states.get(metric)
        if alert_state is None:
            alert_state = alert_states[metric] = MetricAlertState()
        events = step(
            alert_state,
            Subject(sid, reading.loc_id, metric),
            evaluation,
            value,
            capture,
            now,
        )
        if events:
            new_alerts.setdefault(sid, []).extend(events)
    if state.silent_alert_id is not None:
        new_alerts.setdefault(sid, []).append(
            _silent_event(state, AlertTransition.RESOLVED, capture, now)
        )
        state.silent_alert_id = None
    return statuses


def _record_touched(
    partition: PartitionState,
    states: dict[str, SensorState],
    touched: Mapping[str, Collection[datetime]],
    new_alerts: Mapping[str, list[AlertEvent]],
    sealed: Mapping[str, list[SeenChunk]],
    offset: int,
    ctx: Context,
    out: Outputs,
) -> None:
    """Close the record for every sensor it applied to (``touched``, with the open hours it
    counted into): the sensor has record ``offset``, its hours changed, and its new alert
    events and sealed chunks go out and into its outbox."""
    for sid, hours in touched.items():
        state = states[sid]
        state.last_offset = offset
        partition.sensors.add(sid)
        for hour_start in sorted(hours):
            out.changed.hours[(sid, hour_start)] = (state, state.windows[hour_start])
        events = new_alerts.get(sid, [])
        out.alerts.extend(events)
        chunks = sealed.get(sid, [])
        out.chunks.extend(chunks)
        _record(state, offset, ctx, [], events, chunks)


def _advance_clocks(
    partition: PartitionState, readings: list[Reading], record_time: datetime
) -> None:
    """Move the partition's watermark to the newest capture time of ``readings`` and its
    data clock to ``record_time``; neither ever goes back."""
    if readings:
        newest_capture = max(r.capture_dt for r in readings)
        partition.watermark = max(partition.watermark or newest_capture, newest_capture)
        partition.last_data_at = max(partition.last_data_at or record_time, record_time)


def _silent_event(
    state: SensorState, transition: AlertTransition, reading_time: datetime, now: datetime
) -> AlertEvent:
    assert state.silent_alert_id is not None
    return AlertEvent(
        event_id=event_id_for(state.silent_alert_id, transition.value, reading_time),
        alert_id=state.silent_alert_id,
        kind=AlertKind.SENSOR_SILENT,
        transition=transition,
        sensor_id=state.sensor_id,
        loc_id=state.loc_id,
        metric=None,
        level=Status.WARNING,
        measured_value=None,
        threshold_id=None,
        threshold_level=None,
        threshold_min=None,
        threshold_max=None,
        reading_time=reading_time,
        decided_at=now,
        message=(
            f"sensor {state.sensor_id} ({state.loc_id}) "
            + (
                "has sent nothing since "
                if transition is AlertTransition.RAISED
                else "is sending again at "
            )
            + reading_time.isoformat()
        ),
    )


def apply_tick(
    partition: PartitionState,
    states: dict[str, SensorState],
    tick_at: datetime,
    offset: int,
    ctx: Context,
) -> Outputs:
    """Close the hours whose grace has passed and raise sensor-silent alerts.

    Hours close by the partition's event-time watermark.  When the partition has received
    nothing for ``idle_after`` (by record time), the tick's own time stands in for it, so a
    plant that went quiet still gets its final aggregates.  Such a final is revisable: the
    window is kept until the data's own watermark closes it, and readings that still arrive
    for it are counted and emitted as a newer final.  (Dropping them as late undercounted
    the hour whenever data running behind the clock paused for ``idle_after``, e.g. through
    a Kafka outage, whose ticks reach the partition before the backlog does.)
    """
    out = Outputs()
    data_watermark = watermark = partition.watermark
    idle = partition.last_data_at is None or tick_at - partition.last_data_at >= ctx.idle_after
    if idle and (watermark is None or tick_at > watermark):
        watermark = tick_at
    for sid in sorted(partition.sensors):
        state = states.get(sid)
        if state is None or _replayed(state, offset, out):
            continue
        finals = (
            _close_hours(sid, state, watermark, data_watermark, tick_at, ctx, out)
            if watermark is not None
            else []
        )
        alerts = _raise_silent(sid, state, tick_at, ctx)
        dropped = _expired_chunks(sid, state, tick_at, ctx.outbox_keep)
        pruned = [
            e
            for e in state.outbox
            if e.created >= tick_at - ctx.outbox_keep
            and (ctx.replay_from is None or e.offset >= ctx.replay_from)
        ]
        if finals or alerts or dropped or len(pruned) != len(state.outbox):
            state.outbox = pruned
            state.last_offset = offset
            _record(state, offset, ctx, finals, alerts, dropped)
            out.aggregates.extend(finals)
            out.alerts.extend(alerts)
            out.chunks.extend(dropped)
    return out


def _close_hours(
    sid: str,
    state: SensorState,
    watermark: datetime,
    data_watermark: datetime | None,
    tick_at: datetime,
    ctx: Context,
    out: Outputs,
) -> list[HourlyAggregate]:
    """The finals of the sensor's hours that ``watermark`` closes, oldest first, each
    listed in ``out.finalized``.

    An hour the data's own watermark closes is closed for good: its window goes, its sealed
    chunks are retired (deleted ``outbox_keep`` after ``tick_at``) and later readings of it
    are late.  An hour only the idle clock closes keeps its window, and gets a final again
    only once it counted more readings.
    """
    finals: list[HourlyAggregate] = []
    for hour_start in sorted(state.windows):
        closes = ctx.policy.closes_at(hour_start)
        if closes > watermark:
            continue
        window = state.windows[hour_start]
        if data_watermark is not None and closes <= data_watermark:
            del state.windows[hour_start]  # closed by the data: for good
            if window.chunks:
                state.retired.append((hour_start, len(window.chunks), tick_at))
            state.closed_through = max(state.closed_through or hour_start, hour_start)
        elif window.final_sent:
            continue  # closed by the idle clock before, nothing new since
        window.final_sent = True
        finals.append(window.aggregate(sid, state.loc_id, final=True, now=ctx.now))
        out.finalized.append((sid, hour_start))
    return finals


def _raise_silent(
    sid: str, state: SensorState, tick_at: datetime, ctx: Context
) -> list[AlertEvent]:
    """The sensor-silent alert raised now, if the sensor (seen before) has sent nothing for
    ``silent_after`` by record time and has none raised; the sensor's next reading resolves
    it (:func:`apply_batch`)."""
    if (
        state.silent_alert_id is None
        and state.last_seen is not None
        and tick_at - state.last_seen >= ctx.silent_after
    ):
        since = state.last_capture or state.last_seen
        state.silent_alert_id = uuid.uuid5(NAMESPACE, f"silent|{sid}|{since.isoformat()}")
        return [_silent_event(state, AlertTransition.RAISED, since, ctx.now)]
    return []


def _expired_chunks(
    sid: str, state: SensorState, tick_at: datetime, keep: timedelta
) -> list[SeenChunk]:
    """The deletions of every sealed chunk of the hours retired ``keep`` or longer before
    ``tick_at``; those hours are forgotten."""
    dropped = [
        SeenChunk(sensor_id=sid, hour_start=hour_start, index=index)
        for hour_start, count, closed in state.retired
        if tick_at - closed >= keep
        for index in range(count)
    ]
    if dropped:
        state.retired = [r for r in state.retired if tick_at - r[2] < keep]
    return dropped
