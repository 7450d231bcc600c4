"""Simulated gateways: a plant of sensors and the messages their gateways would publish.

Plain logic, no I/O and no clock: :func:`build_plan` fixes everything (plant, start instant,
scenarios, seed) and :func:`messages` turns a plan into an endless, deterministic stream of
:class:`Message` objects ordered by the wall-clock second, counted from the run's start, at
which each is due.  ``producers.simulate_cmd`` paces and publishes them.

Time: ``interval_s`` is the WALL-clock gap between two readings of one sensor; ``speed`` is
simulated seconds per wall second, so two readings of a sensor are ``interval_s * speed``
simulated seconds apart and a reading due ``d`` wall seconds after the start is captured at
``start + d * speed``.  With ``speed == 1`` and ``start == now`` capture times are wall time.

Randomness: every draw comes from a :class:`random.Random` seeded by the plan's seed and a
sensor id, so a sensor's clean values do not depend on how many sensors run or which scenarios
are on (scenarios draw from a second stream of their own).
"""

from __future__ import annotations

import heapq
import json
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache
from itertools import count
from typing import Any, Literal
from zoneinfo import ZoneInfo

import orjson

from producers.masterdata import MasterData
from schemas.master import Location, Sensor
from stream_apps.ingest.perceived import perceived_temperature

MalformedKind = Literal["truncated", "wrong_type", "nan", "out_of_range", "missing_field"]
MALFORMED_KINDS: tuple[MalformedKind, ...] = (
    "truncated",
    "wrong_type",
    "nan",
    "out_of_range",
    "missing_field",
)

PLANT = "Busan"


@dataclass(frozen=True)
class _Building:
    letter: str  # first character of the loc_id of every sensor in the building
    factory: str
    name: str
    floors: int
    areas: tuple[str, ...]


_BUILDINGS = (
    _Building(
        "A",
        "SinPyeong",
        "MX-1",
        2,
        ("Storage", "Assembly 1", "Assembly 2", "Packing", "Molding", "Office"),
    ),
    _Building("B", "JangNim", "JN-1", 2, ("Cutting", "Sewing", "Assembly 1", "Storage", "QC Lab")),
    _Building("C", "SinPyeong", "F-2001", 3, ("Assembly 1", "Assembly 2", "Painting", "Storage")),
    _Building("D", "JangNim", "JN-2", 2, ("Molding", "Packing", "Loading Dock", "Storage")),
    _Building(
        "E", "SinPyeong", "MX-2", 2, ("Storage", "Cutting", "Assembly 1", "Assembly 2", "Packing")
    ),
    _Building("F", "JangNim", "W-1", 1, ("Storage", "Loading Dock", "Office")),
)
_EXTRA_AREAS = (
    "Storage",
    "Assembly 1",
    "Assembly 2",
    "Packing",
    "Molding",
    "Cutting",
    "Sewing",
    "Loading Dock",
)
_EXTRA_LETTERS = "GHIJKLMNOPQRSTUVWXYZ"
_MAX_FLOORS = 99  # loc_id = letter + two-digit floor + area digit: 4 characters
MAX_SENSORS = sum(b.floors * len(b.areas) for b in _BUILDINGS) + len(_EXTRA_LETTERS) * (
    _MAX_FLOORS * len(_EXTRA_AREAS)
)

# Area character: (temperature offset °C, daily amplitude factor, humidity base %).
_AREA_CLIMATE: dict[str, tuple[float, float, float]] = {
    "Storage": (-1.0, 0.8, 62.0),
    "Assembly 1": (0.0, 1.0, 58.0),
    "Assembly 2": (0.3, 1.0, 58.0),
    "Packing": (0.0, 1.0, 56.0),
    "Molding": (2.5, 1.1, 50.0),
    "Painting": (1.5, 0.9, 48.0),
    "Cutting": (0.5, 1.0, 55.0),
    "Sewing": (0.5, 1.0, 55.0),
    "QC Lab": (-1.0, 0.5, 50.0),
    "Office": (-0.5, 0.5, 50.0),
    "Loading Dock": (0.5, 1.6, 66.0),
}


@dataclass(frozen=True)
class Climate:
    """How one sensor's place behaves; see :func:`expected_values`."""

    offset_c: float
    amplitude_c: float
    peak_hour: float  # local hour of the daily maximum
    humidity_base: float
    drift_amp_c: float  # slow multi-day drift ("weather")
    drift_period_h: float
    drift_phase: float
    noise_c: float
    sends_pcv: bool  # the gateway reports pcv_temperature itself


@dataclass(frozen=True)
class SimSensor:
    sensor: Sensor
    location: Location
    climate: Climate

    @property
    def sensor_id(self) -> str:
        return self.sensor.sensor_id


def plant_layout(n: int) -> list[tuple[Location, Sensor]]:
    """The first ``n`` places of the plant, each with one sensor (ids depend only on ``n``).

    Buildings fill one after another, floor by floor: ``TEMPIOT-A011`` is building A
    (SinPyeong MX-1), floor 1, first area; ``loc_id`` is the last 4 characters of the id.
    Raises ValueError when ``n`` is not in 1..MAX_SENSORS.
    """
    if not 1 <= n <= MAX_SENSORS:
        raise ValueError(f"sensors must be between 1 and {MAX_SENSORS}, got {n}")
    buildings = list(_BUILDINGS)
    remaining = n - sum(b.floors * len(b.areas) for b in buildings)
    for k, letter in enumerate(_EXTRA_LETTERS):
        if remaining <= 0:
            break
        per_building = math.ceil(remaining / (len(_EXTRA_LETTERS) - k))
        floors = min(_MAX_FLOORS, max(3, math.ceil(per_building / len(_EXTRA_AREAS))))
        factory, prefix = ("SinPyeong", "MX") if k % 2 == 0 else ("JangNim", "JN")
        buildings.append(_Building(letter, factory, f"{prefix}-{3 + k // 2}", floors, _EXTRA_AREAS))
        remaining -= floors * len(_EXTRA_AREAS)
    out: list[tuple[Location, Sensor]] = []
    for b in buildings:
        for floor in range(1, b.floors + 1):
            for a, area in enumerate(b.areas, start=1):
                if len(out) == n:
                    return out
                loc_id = f"{b.letter}{floor:02d}{a}"
                name = f"{b.factory} {b.name} {floor}F {area}"
                location = Location(
                    loc_id=loc_id,
                    plant=PLANT,
                    factory=b.factory,
                    building=b.name,
                    floor=floor,
                    area=area,
                    location_name=name,
                )
                out.append(
                    (location, Sensor(sensor_id=f"TEMPIOT-{loc_id}", loc_id=loc_id, name=name))
                )
    return out


def build_plant(n: int, seed: int, pcv_fraction: float = 0.25) -> tuple[SimSensor, ...]:
    """``n`` sensors with a climate drawn from ``seed`` (ids and places from ``n`` alone)."""
    sensors = []
    for location, sensor in plant_layout(n):
        rng = random.Random(f"{seed}/climate/{sensor.sensor_id}")
        offset, amp_factor, humidity = _AREA_CLIMATE[location.area or "Storage"]
        climate = Climate(
            offset_c=offset + rng.gauss(0, 0.6),
            amplitude_c=amp_factor * rng.uniform(2.0, 3.0),
            peak_hour=15.0 + rng.uniform(-0.75, 0.75),
            humidity_base=humidity + rng.gauss(0, 3),
            drift_amp_c=rng.uniform(0.3, 1.2),
            drift_period_h=rng.uniform(90, 200),
            drift_phase=rng.uniform(0, 2 * math.pi),
            noise_c=rng.uniform(0.08, 0.2),
            sends_pcv=rng.random() < pcv_fraction,
        )
        sensors.append(SimSensor(sensor, location, climate))
    return tuple(sensors)


def master_data(sensors: tuple[SimSensor, ...], gateway: str | None = None) -> MasterData:
    """The locations and sensors to register before the simulated gateways publish (the
    sensors assigned to ``gateway`` when one is named)."""
    return MasterData(
        [s.location for s in sensors],
        [s.sensor.model_copy(update={"gateway": gateway}) for s in sensors],
    )


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def expected_values(sim: SimSensor, when: datetime) -> tuple[float, float]:
    """Noise-free (temperature °C, relative humidity %) of a sensor at an aware instant.

    A daily cosine in the location's local time, warmest at ``peak_hour`` (mid-afternoon) and
    coolest twelve hours earlier, on a seasonal base (cool in January, warm in July), plus a
    slow drift; humidity moves against the temperature's deviation.
    """
    c = sim.climate
    local = when.astimezone(_zone(sim.location.timezone))
    hour = local.hour + local.minute / 60 + local.second / 3600
    season = -math.cos(2 * math.pi * (local.timetuple().tm_yday - 20) / 365.25)
    cycle = math.cos(2 * math.pi * (hour - c.peak_hour) / 24)
    hours = when.timestamp() / 3600
    drift = c.drift_amp_c * math.sin(2 * math.pi * hours / c.drift_period_h + c.drift_phase)
    deviation = c.amplitude_c * cycle + drift
    temperature = 22.5 + 3.5 * season + c.offset_c + deviation
    humidity = c.humidity_base + 6.0 * season - 2.0 * deviation
    return temperature, min(95.0, max(15.0, humidity))


@dataclass(frozen=True)
class Scenarios:
    """Which disturbances to simulate (combinable) and how often."""

    heat_wave: bool = False
    silent: bool = False
    stuck: bool = False
    spikes: bool = False
    disorder: bool = False
    malformed: bool = False
    original_format: bool = False
    malformed_fraction: float = 0.05  # of messages
    original_fraction: float = 0.3  # of readings, when original_format
    silent_fraction: float = 0.1  # of sensors (at least one, never all)
    stuck_fraction: float = 0.05  # of sensors (at least one)
    spike_probability: float = 0.01  # per reading
    delay_probability: float = 0.05  # per message, when disorder
    duplicate_probability: float = 0.03  # per message, when disorder
    max_delay_s: float = 180.0  # simulated seconds a delayed message may lag


@dataclass(frozen=True)
class SimulationPlan:
    """Everything a run depends on; :func:`messages` of equal plans are equal."""

    sensors: tuple[SimSensor, ...]
    start: datetime  # aware; simulated capture time of the first reading
    interval_s: float  # wall seconds between two readings of one sensor
    speed: float  # simulated seconds per wall second
    seed: int
    batch: int  # readings per message
    scenarios: Scenarios
    span_s: float | None  # simulated seconds the run is expected to cover, if known
    heat_wave_ramp_s: float  # simulated seconds until the heat wave is at its peak
    silent_at: Mapping[str, float] = field(default_factory=dict)  # sensor id -> sim seconds
    stuck_at: Mapping[str, float] = field(default_factory=dict)

    @property
    def messages_per_second(self) -> float:
        """Wall-clock rate of the schedule (before disorder adds duplicates)."""
        return len(self.sensors) / (self.interval_s * self.batch)


def expected_span_s(
    sensors: int,
    interval_s: float,
    speed: float,
    *,
    batch: int = 1,
    duration_s: float | None = None,
    count: int | None = None,
) -> float | None:
    """Simulated seconds a run bounded by a duration and/or a message count will cover."""
    spans = []
    if duration_s is not None:
        spans.append(duration_s * speed)
    if count is not None:
        spans.append(count / (sensors / (interval_s * batch)) * speed)
    return min(spans) if spans else None


def default_start(
    now: datetime, speed: float, span_s: float | None, *, paced: bool = True
) -> datetime:
    """Where simulated time starts when the user did not say.

    Paced at ``speed == 1``: now, so capture times are wall-clock times.  Faster (or unpaced),
    a bounded run ends at ``now`` so no capture time lies in the future; an unbounded one
    starts a day ago (and overtakes the clock after a simulated day).
    """
    if speed == 1 and paced:
        return now
    return now - timedelta(seconds=span_s if span_s is not None else 86400.0)


def build_plan(
    sensors: int,
    *,
    start: datetime,
    interval_s: float = 5.0,
    speed: float = 1.0,
    seed: int = 0,
    batch: int = 1,
    scenarios: Scenarios | None = None,
    span_s: float | None = None,
    pcv_fraction: float = 0.25,
) -> SimulationPlan:
    """A plan of ``sensors`` simulated sensors; ``start`` must be aware.

    ``span_s`` (simulated seconds, see :func:`expected_span_s`) times the scenarios: the heat
    wave peaks at 85 % of it, silent and stuck sensors fail between 25 % and 50 % of it.
    Without it the heat wave peaks after 3 simulated hours and failures come after 10-30
    simulated minutes.  Raises ValueError for impossible values.
    """
    if start.tzinfo is None:
        raise ValueError("start must be an aware datetime")
    if interval_s <= 0 or speed <= 0 or batch < 1:
        raise ValueError("interval_s and speed must be positive, batch at least 1")
    sc = scenarios or Scenarios()
    plant = build_plant(sensors, seed, pcv_fraction)
    rng = random.Random(f"{seed}/scenarios")
    ids = [s.sensor_id for s in plant]

    def failure_time() -> float:
        if span_s is not None:
            return span_s * rng.uniform(0.25, 0.5)
        return rng.uniform(600.0, 1800.0)

    silent_at: dict[str, float] = {}
    if sc.silent and len(ids) > 1:
        k = min(len(ids) - 1, max(1, round(sc.silent_fraction * len(ids))))
        silent_at = {sid: failure_time() for sid in rng.sample(ids, k)}
    stuck_at: dict[str, float] = {}
    if sc.stuck:
        candidates = [sid for sid in ids if sid not in silent_at] or ids
        k = min(len(candidates), max(1, round(sc.stuck_fraction * len(ids))))
        stuck_at = {sid: failure_time() for sid in rng.sample(candidates, k)}
    return SimulationPlan(
        sensors=plant,
        start=start,
        interval_s=interval_s,
        speed=speed,
        seed=seed,
        batch=batch,
        scenarios=sc,
        span_s=span_s,
        heat_wave_ramp_s=0.85 * span_s if span_s else 3 * 3600.0,
        silent_at=silent_at,
        stuck_at=stuck_at,
    )


@dataclass(frozen=True)
class SimReading:
    """One reading as it is encoded in a message (values as sent, capture time as the
    pipeline should store it: the original format has whole seconds)."""

    sensor_id: str
    capture_dt: datetime  # aware
    temperature: float
    humidity: float
    pcv_temperature: float | None  # None: not in the payload
    original_format: bool = False
    malformed: MalformedKind | None = None


@dataclass(frozen=True)
class Message:
    """One publish: the bytes and what they carry."""

    due_s: float  # wall seconds after the run's start
    sensor_id: str
    payload: bytes
    readings: tuple[SimReading, ...]
    duplicate: bool = False  # a redelivery of an earlier message, same bytes

    @property
    def valid(self) -> bool:
        return all(r.malformed is None for r in self.readings)


def iso_z(when: datetime) -> str:
    """UTC instant with milliseconds and ``Z``: ``2025-09-12T05:59:38.837Z``."""
    utc = when.astimezone(_zone("UTC"))
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def wire_item(r: SimReading) -> dict[str, Any]:
    """The documented wire format of one reading."""
    item: dict[str, Any] = {
        "sensor_id": r.sensor_id,
        "capture_dt": iso_z(r.capture_dt),
        "temperature": r.temperature,
        "humidity": r.humidity,
    }
    if r.pcv_temperature is not None:
        item["pcv_temperature"] = r.pcv_temperature
    return item


def original_item(r: SimReading, timezone: str) -> dict[str, Any]:
    """The original system's row: naive local time, values as strings, t1/t2/t3."""
    local = r.capture_dt.astimezone(_zone(timezone))
    item: dict[str, Any] = {
        "sensor_id": r.sensor_id,
        "capture_dt": f"{local:%Y-%m-%d %H:%M:%S}",
        "t1": f"{r.temperature:.1f}",
        "t2": f"{r.humidity:.1f}",
    }
    if r.pcv_temperature is not None:
        item["t3"] = f"{r.pcv_temperature:.1f}"
    return item


def ground_truth(message: Message) -> dict[str, Any]:
    """What a loss test needs to know about a published message (one JSON line)."""
    first = message.readings[0]
    doc: dict[str, Any] = {
        "sensor_id": message.sensor_id,
        "capture_dt": iso_z(first.capture_dt),
        "valid": message.valid,
        "malformed": next((r.malformed for r in message.readings if r.malformed), None),
        "duplicate": message.duplicate,
        "format": "original" if first.original_format else "wire",
        "readings": len(message.readings),
    }
    if len(message.readings) > 1:
        doc["batch"] = [
            {
                "capture_dt": iso_z(r.capture_dt),
                "valid": r.malformed is None,
                "malformed": r.malformed,
            }
            for r in message.readings
        ]
    return doc


def heat_wave_progress(plan: SimulationPlan, sim_offset_s: float) -> float:
    """0 before the heat wave, rising linearly to 1 at its peak, 1 after."""
    return min(1.0, max(0.0, sim_offset_s / plan.heat_wave_ramp_s))


def _pcv(temperature: float, humidity: float) -> float | None:
    value = perceived_temperature(Decimal(f"{temperature:.1f}"), Decimal(f"{humidity:.1f}"))
    return None if value is None else float(value)


_FIELDS = {False: ("temperature", "humidity"), True: ("t1", "t2")}


def _corrupt(item: dict[str, Any], kind: MalformedKind, rng: random.Random, original: bool) -> None:
    """Break one reading's object in place (``truncated`` is applied to the bytes)."""
    temperature, humidity = _FIELDS[original]
    name = rng.choice((temperature, humidity))
    if kind == "wrong_type":
        bad: list[Any] = ["warm", [item[name]], {"value": item[name]}]
        if not original:
            bad.append(f"{item[name]} C")
        choice = rng.choice([*bad, "capture_dt"])
        if choice == "capture_dt":
            item["capture_dt"] = rng.choice(["yesterday", {"ts": item["capture_dt"]}, [2025, 9]])
        else:
            item[name] = choice
    elif kind == "nan":
        item[name] = rng.choice([math.nan, math.inf, "NaN", "-Infinity"])
    elif kind == "out_of_range":
        item[name] = (
            rng.choice([999.9, -273.5]) if name == temperature else rng.choice([150.0, -5.0])
        )
        if original:
            item[name] = f"{item[name]:.1f}"
    elif kind == "missing_field":
        # Never the sensor id: the MQTT topic names the sensor, so it could be filled in.
        del item[rng.choice(["capture_dt", temperature, humidity])]


class _SensorState:
    def __init__(self, plan: SimulationPlan, sim: SimSensor) -> None:
        self.sim = sim
        self.values = random.Random(f"{plan.seed}/values/{sim.sensor_id}")
        self.faults = random.Random(f"{plan.seed}/faults/{sim.sensor_id}")
        self.silent_at = plan.silent_at.get(sim.sensor_id)
        self.stuck_at = plan.stuck_at.get(sim.sensor_id)
        self.last: tuple[float, float] | None = None


def _reading(plan: SimulationPlan, st: _SensorState, sim_offset_s: float) -> SimReading:
    sc = plan.scenarios
    when = plan.start + timedelta(seconds=sim_offset_s)
    when -= timedelta(microseconds=when.microsecond % 1000)
    if st.stuck_at is not None and sim_offset_s >= st.stuck_at and st.last is not None:
        temperature, humidity = st.last
    else:
        temperature, humidity = expected_values(st.sim, when)
        temperature += st.values.gauss(0, st.sim.climate.noise_c)
        humidity += st.values.gauss(0, 4 * st.sim.climate.noise_c)
        if sc.heat_wave:
            # Blend towards a hot, humid day (perceived about 37 °C): crosses 31, 33 and 35.
            p = heat_wave_progress(plan, sim_offset_s)
            local = when.astimezone(_zone(st.sim.location.timezone))
            cycle = math.cos(2 * math.pi * (local.hour + local.minute / 60 - 15) / 24)
            temperature = (1 - p) * temperature + p * (36.0 + 0.6 * cycle)
            humidity = (1 - p) * humidity + p * 68.0
        temperature, humidity = round(temperature, 1), round(min(99.0, max(5.0, humidity)), 1)
        st.last = (temperature, humidity)
        if sc.spikes and st.faults.random() < sc.spike_probability:
            temperature = round(
                temperature + st.faults.choice((1, 1, -1)) * st.faults.uniform(8, 15), 1
            )
    original = sc.original_format and st.faults.random() < sc.original_fraction
    if original:
        when = when.replace(microsecond=0)
    pcv = _pcv(temperature, humidity) if original or st.sim.climate.sends_pcv else None
    return SimReading(st.sim.sensor_id, when, temperature, humidity, pcv, original)


def _message(
    plan: SimulationPlan, st: _SensorState, due: float, readings: list[SimReading]
) -> Message:
    sc = plan.scenarios
    tz = st.sim.location.timezone
    items = [original_item(r, tz) if r.original_format else wire_item(r) for r in readings]
    kind: MalformedKind | None = None
    if sc.malformed and st.faults.random() < sc.malformed_fraction:
        kind = st.faults.choice(MALFORMED_KINDS)
    if kind is None:
        body: Any = items[0] if plan.batch == 1 else items
        return Message(due, st.sim.sensor_id, orjson.dumps(body), tuple(readings))
    if kind == "truncated":
        whole = orjson.dumps(items[0] if plan.batch == 1 else items)
        payload = whole[: st.faults.randrange(1, len(whole) - 1)]
        broken = [replace(r, malformed=kind) for r in readings]
    else:
        index = st.faults.randrange(len(items))
        _corrupt(items[index], kind, st.faults, readings[index].original_format)
        # The standard library writes NaN/Infinity literals, as some gateways do.
        payload = json.dumps(items[0] if plan.batch == 1 else items).encode()
        broken = list(readings)
        broken[index] = replace(readings[index], malformed=kind)
    return Message(due, st.sim.sensor_id, payload, tuple(broken))


def messages(plan: SimulationPlan) -> Iterator[Message]:
    """The endless stream of messages of a plan, in order of ``due_s`` (ties keep order).

    Each sensor sends every ``interval_s * batch`` wall seconds, sensors spread evenly over
    the interval.  Under ``disorder`` some messages are held back (delivered after the
    sensor's next ones, at most ``max_delay_s`` simulated seconds late) and some are
    delivered twice; under ``silent`` a sensor sends nothing from its ``silent_at`` on.
    """
    sc = plan.scenarios
    states = [_SensorState(plan, s) for s in plan.sensors]
    n, k = len(states), plan.batch
    sim_interval = plan.interval_s * plan.speed
    held: list[tuple[float, int, Message]] = []
    order = count()
    for step in count():
        for i, st in enumerate(states):
            due = (step * k + k - 1 + i / n) * plan.interval_s
            while held and held[0][0] <= due:
                yield heapq.heappop(held)[2]
            offsets = [(step * k + j + i / n) * sim_interval for j in range(k)]
            if st.silent_at is not None and offsets[0] >= st.silent_at:
                continue
            msg = _message(plan, st, due, [_reading(plan, st, s) for s in offsets])
            if sc.disorder:
                if st.faults.random() < sc.delay_probability:
                    min_lag = 1.5 * k * sim_interval
                    lag = st.faults.uniform(min_lag, max(min_lag, sc.max_delay_s))
                    late = due + lag / plan.speed
                    heapq.heappush(held, (late, next(order), replace(msg, due_s=late)))
                    continue
                if st.faults.random() < sc.duplicate_probability:
                    again = due + st.faults.uniform(0.0, 30.0) / plan.speed
                    copy = replace(msg, due_s=again, duplicate=True)
                    heapq.heappush(held, (again, next(order), copy))
            yield msg
