from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from itertools import islice
from zoneinfo import ZoneInfo

import pytest

from producers.simulator import (
    MALFORMED_KINDS,
    Message,
    Scenarios,
    SimulationPlan,
    build_plan,
    default_start,
    expected_span_s,
    expected_values,
    ground_truth,
    master_data,
    messages,
    plant_layout,
)
from schemas.master import loc_id_by_convention
from schemas.readings import ReadingPayload
from stream_apps.ingest.perceived import perceived_temperature

pytestmark = pytest.mark.unit

KST = ZoneInfo("Asia/Seoul")
START = datetime(2025, 9, 12, 0, 0, tzinfo=UTC)  # 09:00 KST


def take(plan: SimulationPlan, n: int) -> list[Message]:
    return list(islice(messages(plan), n))


def until(plan: SimulationPlan, sim_seconds: float) -> list[Message]:
    out: list[Message] = []
    for m in messages(plan):
        if m.due_s * plan.speed >= sim_seconds:
            return out
        out.append(m)
    raise AssertionError("unreachable")


def test_plant_layout_follows_the_original_conventions() -> None:
    layout = plant_layout(40)
    ids = [s.sensor_id for _, s in layout]
    assert ids[:3] == ["TEMPIOT-A011", "TEMPIOT-A012", "TEMPIOT-A013"]
    assert len(set(ids)) == 40
    for location, sensor in layout:
        assert sensor.loc_id == location.loc_id == loc_id_by_convention(sensor.sensor_id)
    assert {loc.factory for loc, _ in layout} == {"SinPyeong", "JangNim"}
    first = layout[0][0]
    assert (first.factory, first.building, first.floor, first.area) == (
        "SinPyeong",
        "MX-1",
        1,
        "Storage",
    )
    assert len({loc.building for loc, _ in layout}) >= 3


def test_large_plants_keep_unique_four_character_locations() -> None:
    layout = plant_layout(3000)
    loc_ids = [loc.loc_id for loc, _ in layout]
    assert len(set(loc_ids)) == 3000
    assert all(len(loc_id) == 4 for loc_id in loc_ids)
    with pytest.raises(ValueError, match="sensors"):
        plant_layout(0)


def test_master_data_lists_every_sensor_and_location() -> None:
    plan = build_plan(12, start=START)
    data = master_data(plan.sensors)
    assert [s.sensor_id for s in data.sensors] == [s.sensor_id for s in plan.sensors]
    assert {loc.loc_id for loc in data.locations} == {s.loc_id for s in data.sensors}


def test_same_seed_same_messages_other_seed_other_values() -> None:
    scenarios = Scenarios(
        spikes=True, disorder=True, malformed=True, original_format=True, stuck=True, silent=True
    )
    a = take(build_plan(20, start=START, seed=7, scenarios=scenarios), 2000)
    b = take(build_plan(20, start=START, seed=7, scenarios=scenarios), 2000)
    c = take(build_plan(20, start=START, seed=8, scenarios=scenarios), 2000)
    assert a == b
    assert [m.payload for m in a] != [m.payload for m in c]


def test_a_sensors_values_do_not_depend_on_the_other_sensors() -> None:
    small = [
        m for m in take(build_plan(3, start=START, seed=3), 30) if m.sensor_id.endswith("A011")
    ]
    large = [
        m for m in take(build_plan(30, start=START, seed=3), 300) if m.sensor_id.endswith("A011")
    ]
    assert [m.readings[0].temperature for m in small] == [m.readings[0].temperature for m in large]


def test_wire_format_payloads_validate() -> None:
    for m in take(build_plan(20, start=START, seed=1, pcv_fraction=0.5), 200):
        doc = json.loads(m.payload)
        payload = ReadingPayload.model_validate(doc)
        assert payload.sensor_id == m.sensor_id
        assert _problem(m.payload) is None
        assert doc["capture_dt"].endswith("Z")
        assert len(doc["capture_dt"]) == len("2025-09-12T05:59:38.837Z")
        assert round(doc["temperature"], 1) == doc["temperature"]
        if "pcv_temperature" in doc:
            computed = perceived_temperature(
                Decimal(str(doc["temperature"])), Decimal(str(doc["humidity"]))
            )
            assert Decimal(str(doc["pcv_temperature"])) == computed


def test_speed_one_starts_now_and_spreads_sensors_over_the_interval() -> None:
    plan = build_plan(10, start=START, interval_s=5)
    first = take(plan, 10)
    assert [m.due_s for m in first] == pytest.approx([i * 0.5 for i in range(10)])
    assert first[3].readings[0].capture_dt == datetime(2025, 9, 12, 0, 0, 1, 500000, UTC)
    nxt = take(plan, 11)[-1]
    assert nxt.sensor_id == first[0].sensor_id
    assert nxt.readings[0].capture_dt == datetime(2025, 9, 12, 0, 0, 5, tzinfo=UTC)


def test_speed_scales_simulated_time_only() -> None:
    plan = build_plan(4, start=START, interval_s=2, speed=3600)
    ms = take(plan, 8)
    assert ms[4].due_s == pytest.approx(2.0)
    assert ms[4].readings[0].capture_dt == datetime(2025, 9, 12, 2, 0, tzinfo=UTC)


def test_daily_cycle_warmest_mid_afternoon_kst() -> None:
    plan = build_plan(40, start=START, seed=5)
    day = datetime(2025, 9, 12, tzinfo=KST)

    def mean(hour: int) -> float:
        return sum(expected_values(s, day.replace(hour=hour))[0] for s in plan.sensors) / 40

    assert mean(15) > mean(4) + 3
    hourly = [mean(h) for h in range(24)]
    assert hourly.index(max(hourly)) in (14, 15, 16)
    humidity_15 = sum(expected_values(s, day.replace(hour=15))[1] for s in plan.sensors)
    humidity_4 = sum(expected_values(s, day.replace(hour=4))[1] for s in plan.sensors)
    assert humidity_15 < humidity_4  # anti-correlated


def test_generated_readings_follow_the_cycle() -> None:
    # One simulated day in 24 wall "seconds" per sensor reading.
    plan = build_plan(20, start=datetime(2025, 9, 12, tzinfo=KST), interval_s=1, speed=3600)
    by_hour: dict[int, list[float]] = {}
    for m in until(plan, 86400):
        r = m.readings[0]
        by_hour.setdefault(r.capture_dt.astimezone(KST).hour, []).append(r.temperature)
    mean = {h: sum(v) / len(v) for h, v in by_hour.items()}
    assert mean[15] > mean[4] + 3


def test_heat_wave_crosses_31_33_and_35_perceived() -> None:
    span = 6 * 3600.0
    plan = build_plan(
        10, start=START, interval_s=1, speed=60, span_s=span, scenarios=Scenarios(heat_wave=True)
    )
    series: list[tuple[float, Decimal]] = []
    for m in until(plan, span):
        r = m.readings[0]
        pcv = perceived_temperature(Decimal(str(r.temperature)), Decimal(str(r.humidity)))
        assert pcv is not None
        series.append((m.due_s * plan.speed, pcv))
    assert max(p for t, p in series if t < 600) < 31
    for level in (31, 33, 35):
        first = next(t for t, p in series if p >= level)
        assert first < span
    assert min(p for t, p in series if t > 0.9 * span) >= 35
    crossings = [next(t for t, p in series if p >= level) for level in (31, 33, 35)]
    assert crossings == sorted(crossings)


def test_silent_sensors_stop_and_others_continue() -> None:
    span = 3600.0
    plan = build_plan(10, start=START, interval_s=10, span_s=span, scenarios=Scenarios(silent=True))
    assert len(plan.silent_at) == 1
    ((sid, at),) = plan.silent_at.items()
    ms = until(plan, span)
    times = [m.due_s for m in ms if m.sensor_id == sid]
    assert times
    assert max(times) < at + 10
    assert sum(1 for m in ms if m.sensor_id != sid and m.due_s > at) > 100


def test_stuck_sensor_repeats_one_value() -> None:
    span = 3600.0
    plan = build_plan(10, start=START, interval_s=5, span_s=span, scenarios=Scenarios(stuck=True))
    ((sid, at),) = plan.stuck_at.items()
    after = {
        (m.readings[0].temperature, m.readings[0].humidity)
        for m in until(plan, span)
        if m.sensor_id == sid and m.due_s > at
    }
    assert len(after) == 1


def test_spikes_are_single_readings() -> None:
    plan = build_plan(
        5, start=START, interval_s=5, scenarios=Scenarios(spike_probability=0.02, spikes=True)
    )
    by_sensor: dict[str, list[float]] = {}
    for m in take(plan, 5000):
        by_sensor.setdefault(m.sensor_id, []).append(m.readings[0].temperature)
    spikes = 0
    for temps in by_sensor.values():
        for before, value, after in zip(temps, temps[1:], temps[2:], strict=False):
            if abs(value - before) > 5 and abs(value - after) > 5:
                spikes += 1
    assert 60 < spikes < 140  # about 2 % of 5000


def test_disorder_delivers_late_and_twice() -> None:
    plan = build_plan(10, start=START, interval_s=5, scenarios=Scenarios(disorder=True))
    ms = take(plan, 4000)
    assert [m.due_s for m in ms] == sorted(m.due_s for m in ms)
    duplicates = [m for m in ms if m.duplicate]
    assert duplicates
    payloads = Counter(m.payload for m in ms)
    assert all(payloads[d.payload] == 2 for d in duplicates)
    newest: dict[str, datetime] = {}
    late = 0
    for m in ms:
        when = m.readings[0].capture_dt
        if m.sensor_id in newest and when < newest[m.sensor_id]:
            late += 1
            assert newest[m.sensor_id] - when <= timedelta(seconds=plan.scenarios.max_delay_s)
        newest[m.sensor_id] = max(when, newest.get(m.sensor_id, when))
    assert late > 50
    # Delivery lag stays within a few simulated minutes.
    for m in ms:
        lag = m.due_s * plan.speed - (m.readings[0].capture_dt - START).total_seconds()
        assert -0.001 <= lag <= plan.scenarios.max_delay_s + 1


def _problem(payload: bytes) -> str | None:
    """A strict reading of the wire contract (both formats), independent of the pipeline."""

    def no_constants(name: str) -> None:
        raise ValueError(name)

    try:
        doc = json.loads(payload, parse_constant=no_constants)
    except ValueError:
        return "malformed json"
    for item in doc if isinstance(doc, list) else [doc]:
        problem = _item_problem(item)
        if problem is not None:
            return problem
    return None


def _item_problem(item: object) -> str | None:
    if not isinstance(item, dict):
        return "not an object"
    t_name, h_name = ("t1", "t2") if "t1" in item else ("temperature", "humidity")
    if any(name not in item for name in ("sensor_id", "capture_dt", t_name, h_name)):
        return "missing field"
    if not _is_iso_time(item["capture_dt"]):
        return "wrong type"
    for name, low, high in ((t_name, -40, 80), (h_name, 0, 100)):
        problem = _number_problem(item[name], low, high)
        if problem is not None:
            return problem
    return None


def _is_iso_time(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _number_problem(value: object, low: int, high: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return "wrong type"
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return "wrong type"
    if not number.is_finite():
        return "not finite"
    if not low <= number <= high:
        return "out of range"
    return None


def test_malformed_payloads_are_invalid_and_marked() -> None:
    scenarios = Scenarios(malformed=True, malformed_fraction=0.2, original_format=True)
    plan = build_plan(20, start=START, seed=2, scenarios=scenarios)
    ms = take(plan, 2000)
    bad = [m for m in ms if not m.valid]
    assert 300 < len(bad) < 500
    assert {r.malformed for m in bad for r in m.readings} == set(MALFORMED_KINDS)
    for m in ms:
        assert (_problem(m.payload) is None) == m.valid, m.payload
    truth = ground_truth(bad[0])
    assert truth["valid"] is False
    assert truth["malformed"] in MALFORMED_KINDS


def test_malformed_batches_mark_the_broken_items() -> None:
    plan = build_plan(
        5, start=START, batch=4, scenarios=Scenarios(malformed=True, malformed_fraction=0.5)
    )
    for m in take(plan, 200):
        assert len(m.readings) == 4
        truth = ground_truth(m)
        assert [b["valid"] for b in truth["batch"]] == [r.malformed is None for r in m.readings]
        if m.valid:
            assert len(json.loads(m.payload)) == 4


def test_original_format_shape() -> None:
    plan = build_plan(
        10,
        start=START,
        scenarios=Scenarios(original_format=True, original_fraction=0.5),
    )
    rows = [m for m in take(plan, 400) if m.readings[0].original_format]
    assert 120 < len(rows) < 280
    for m in rows:
        doc = json.loads(m.payload)
        assert set(doc) == {"sensor_id", "capture_dt", "t1", "t2", "t3"}
        assert all(isinstance(doc[k], str) for k in ("t1", "t2", "t3"))
        local = datetime.strptime(doc["capture_dt"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=KST)
        assert local == m.readings[0].capture_dt  # whole seconds, KST wall time
        computed = perceived_temperature(Decimal(doc["t1"]), Decimal(doc["t2"]))
        assert doc["t3"] == str(computed)
        assert _problem(m.payload) is None
        assert ground_truth(m)["format"] == "original"
    assert json.loads(rows[0].payload)["capture_dt"].startswith("2025-09-12 09:")


def test_batches_carry_consecutive_readings_of_one_sensor() -> None:
    plan = build_plan(4, start=START, interval_s=2, batch=5)
    m = take(plan, 1)[0]
    items = json.loads(m.payload)
    assert isinstance(items, list)
    assert len(items) == 5
    assert {i["sensor_id"] for i in items} == {m.sensor_id}
    assert m.due_s == pytest.approx(8.0)  # sent with its last reading
    assert plan.messages_per_second == pytest.approx(0.4)


def test_span_and_default_start() -> None:
    assert expected_span_s(40, 5, 1, duration_s=60) == 60
    assert expected_span_s(40, 5, 60, count=80) == 600  # 8 msg/s -> 10 s wall
    assert expected_span_s(40, 5, 1) is None
    now = datetime(2025, 9, 12, 6, tzinfo=UTC)
    assert default_start(now, 1, 600) == now
    assert default_start(now, 60, 3600) == datetime(2025, 9, 12, 5, tzinfo=UTC)
    assert default_start(now, 1, 600, paced=False) == datetime(2025, 9, 12, 5, 50, tzinfo=UTC)
    assert default_start(now, 60, None) == datetime(2025, 9, 11, 6, tzinfo=UTC)
