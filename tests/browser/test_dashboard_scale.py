"""What the board does past its first load: sensors registered while it is open, lists
longer than one page of the API, and live changes that must repaint their own tiles only."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import uuid4
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.sync_api import Page, expect

from iotmon.settings import KafkaSettings
from producers.kafka import publish_keyed
from schemas.alerts import AlertEvent, AlertKind, AlertTransition
from schemas.common import Status
from schemas.readings import SensorStatus
from stream_apps.sinks.alerts import AlertsWriter
from tests.api_support import OPERATOR
from tests.browser.conftest import Dashboard, _sql, sign_in

pytestmark = [pytest.mark.integration, pytest.mark.browser]

# Watches the plant for DOM changes and names the tiles they were in.
WATCH_TILES = """() => {
  window.repainted = new Set();
  window.tileWatch = new MutationObserver((records) => {
    for (const r of records) {
      const node = r.target.nodeType === 1 ? r.target : r.target.parentElement;
      const tile = node && node.closest('.tile');
      window.repainted.add(tile ? tile.dataset.loc : '(outside a tile)');
    }
  });
  window.tileWatch.observe(document.querySelector('.plant'),
    { subtree: true, childList: true, characterData: true, attributes: true });
}"""


def status(sensor: str, loc: str, at: datetime, temperature: str) -> SensorStatus:
    return SensorStatus(
        sensor_id=sensor,
        loc_id=loc,
        capture_dt=at,
        temperature=Decimal(temperature),
        humidity=Decimal("50.0"),
        pcv_temperature=Decimal(temperature),
        pcv_computed=True,
        temperature_status=Status.NORMAL,
        humidity_status=None,
        pcv_temperature_status=Status.NORMAL,
        updated_at=at,
    )


def alert(
    loc: str, transition: AlertTransition, alert_id: Any = None, sensor: str | None = None
) -> AlertEvent:
    at = datetime.now(UTC)
    return AlertEvent(
        event_id=uuid4(),
        alert_id=alert_id or uuid4(),
        kind=AlertKind.THRESHOLD,
        transition=transition,
        sensor_id=sensor or f"TEMPIOT-{loc}",
        loc_id=loc,
        metric="temperature",
        level=Status.WARNING,
        measured_value=Decimal("31.00"),
        threshold_id=1,
        threshold_level="yellow",
        threshold_min=Decimal("31.00"),
        threshold_max=Decimal("32.90"),
        reading_time=at,
        decided_at=at,
        message="temperature 31.00",
    )


def register(dashboard: Dashboard, sensor: str, loc: str, **location: Any) -> None:
    body = {
        "sensor": {"sensor_id": sensor, "loc_id": loc},
        "location": {
            "loc_id": loc,
            "factory": "Ochang",
            "building": "OC-1",
            "floor": 1,
            **location,
        },
    }
    r = httpx.post(dashboard.url + "/api/v1/location/", json=body, headers=OPERATOR, timeout=30)
    assert r.status_code == 200, r.text


def test_sensors_registered_after_the_page_loaded_are_drawn_from_the_api(
    page: Page, dashboard: Dashboard, kafka: KafkaSettings
) -> None:
    page.goto(dashboard.url + "/")
    expect(page.locator("#live")).to_have_text("Live")
    expect(page.locator('.tile[data-loc="A011"] dd[data-metric="temperature"]')).to_have_text(
        "24.0 °C"
    )
    # A new location in another zone, a second sensor at a known one, and a location that
    # is registered inactive: the page learns of all three from the live stream only.
    register(
        dashboard,
        "TEMPIOT-C011",
        "C011",
        area="Boiler",
        location_name="Boiler room",
        timezone="Asia/Ho_Chi_Minh",
    )
    register(
        dashboard,
        "TEMPIOT-A011X",
        "A011",
        factory="SinPyeong",
        building="MX-1",
        area="Storage",
        location_name="Storage",
    )
    register(dashboard, "TEMPIOT-D011", "D011", area="Old line", is_active=False)
    at = datetime.now(UTC).replace(microsecond=0)
    publish_keyed(
        kafka,
        "latest",
        [
            ("TEMPIOT-C011", status("TEMPIOT-C011", "C011", at, "27.5")),
            ("TEMPIOT-A011X", status("TEMPIOT-A011X", "A011", at, "26.5")),
            ("TEMPIOT-D011", status("TEMPIOT-D011", "D011", at, "40.0")),
        ],
    )
    new = page.locator('.tile[data-loc="C011"]')
    expect(new.locator('dd[data-metric="temperature"]')).to_have_text("27.5 °C", timeout=20_000)
    # Its name and its zone are the registered ones, not guessed from the stream.
    expect(new.locator(".tile-name")).to_have_text("Boiler room")
    local = at.astimezone(ZoneInfo("Asia/Ho_Chi_Minh")).strftime("%H:%M:%S")
    expect(new.locator(".tile-time")).to_have_text(local)
    expect(page.locator('.factory[data-factory="Ochang"] h2')).to_have_text("Ochang")
    # The second sensor's newer reading is its location's.
    expect(page.locator('.tile[data-loc="A011"] dd[data-metric="temperature"]')).to_have_text(
        "26.5 °C", timeout=20_000
    )
    # The inactive location has no tile, however long one waits.
    page.wait_for_timeout(1500)
    expect(page.locator('.tile[data-loc="D011"]')).to_have_count(0)
    # The factory filter offers the new factory.
    expect(page.locator("#f-factory option", has_text="Ochang")).to_have_count(1)


def test_lists_longer_than_one_page_of_the_api_are_whole(page: Page, dashboard: Dashboard) -> None:
    extra = 1_003  # more than one page (1,000) of /alerts/ and of /thresholds/
    with _sql(dashboard.db) as conn:
        # A sensor has one active alert per metric: each of these is another sensor's.
        AlertsWriter().write(
            conn,
            [
                alert("B011", AlertTransition.RAISED, sensor=f"TEMPIOT-B011N{n}")
                for n in range(extra)
            ],
        )
        conn.execute(
            "INSERT INTO thresholds (threshold_type, level, min_value, max_value, factory)"
            " SELECT 'humidity', 'green', 0, 100, 'F' || n FROM generate_series(1, %s) n",
            (extra,),
        )
        conn.commit()
    seeded_alerts = len(dashboard.alerts)
    page.goto(dashboard.url + "/")
    counts = page.locator('.count[data-status="alerts"] strong')
    expect(counts).to_have_text(str(extra + seeded_alerts))
    expect(page.locator('.tile[data-loc="B011"] .tile-alert')).to_have_text(f"⚠ Warning ×{extra}")

    page.goto(dashboard.url + "/#/alerts")
    expect(page.locator('section[aria-labelledby="active-h"] tr[data-alert]')).to_have_count(
        extra + seeded_alerts
    )

    # A location's page lists its newest 100 and leads to the console's history for it.
    page.goto(dashboard.url + "/#/location/B011")
    more = page.get_by_role(
        "link", name="The newest 100 are shown; the alert console has them all."
    )
    more.click()
    expect(page.get_by_label("Location id")).to_have_value("B011")
    history = page.locator('section[aria-labelledby="history-h"]')
    expect(history.locator("tr[data-alert]")).to_have_count(50)  # the first page
    expect(history.locator("tr[data-alert] td", has_text="A012")).to_have_count(0)

    page.goto(dashboard.url + "/#/thresholds")
    sign_in(page)
    total = httpx.get(
        dashboard.url + "/api/v1/thresholds/?limit=1000&skip=1000", headers=OPERATOR, timeout=10
    ).json()
    assert total, "the seeded thresholds should need a second page"
    rows = page.locator("table tbody tr[data-threshold]")
    expect(rows).to_have_count(1000 + len(total))


@pytest.fixture
def stale_soon(dashboard: Dashboard) -> Iterator[str]:
    """A011's reading made old enough to turn stale some 20 s after the page loaded."""
    stale_after = dashboard.settings.api.stale_after_s
    with _sql(dashboard.db) as conn:
        conn.execute(
            "UPDATE latest_readings SET capture_dt = now() - make_interval(secs => %s)"
            " WHERE loc_id = 'A011'",
            (stale_after - 20,),
        )
        conn.commit()
    yield "A011"


def test_live_changes_repaint_their_own_tiles_only(
    page: Page, dashboard: Dashboard, kafka: KafkaSettings, stale_soon: str
) -> None:
    page.goto(dashboard.url + "/")
    expect(page.locator("#live")).to_have_text("Live")
    tile = page.locator(f'.tile[data-loc="{stale_soon}"]')
    expect(tile).to_have_attribute("data-status", "normal")
    # Once the streams are open the page asks for the values again, and repaints what they
    # changed: the watch starts after that.
    page.wait_for_function("() => performance.getEntriesByName('live-reloaded').length > 0")
    page.evaluate(WATCH_TILES)

    # An alert raised at B011 shows on B011's tile ...
    raised = alert("B011", AlertTransition.RAISED)
    publish_keyed(kafka, "alerts", [(raised.sensor_id, raised)])
    expect(page.locator('.tile[data-loc="B011"] .tile-alert')).to_have_text(
        "⚠ Warning", timeout=20_000
    )
    # ... and A011 turns stale by time alone, with nothing arriving.
    expect(tile).to_have_attribute("data-status", "stale", timeout=40_000)
    # One more staleness check passes (every 5 s) with no change to judge.
    page.wait_for_timeout(6_000)
    repainted = set(page.evaluate("() => [...window.repainted]"))
    assert repainted == {"B011", stale_soon}, repainted

    # Resolving it clears the badge, again on that tile alone.
    page.evaluate("() => window.repainted.clear()")
    resolved = alert("B011", AlertTransition.RESOLVED, raised.alert_id)
    publish_keyed(kafka, "alerts", [(resolved.sensor_id, resolved)])
    expect(page.locator('.tile[data-loc="B011"] .tile-alert')).to_be_hidden(timeout=20_000)
    assert set(page.evaluate("() => [...window.repainted]")) == {"B011"}


def test_odd_streams_neither_flood_the_api_nor_leave_wrong_tiles(
    page: Page, dashboard: Dashboard, kafka: KafkaSettings
) -> None:
    """What a hostile or confused source puts on the stream: an id the API cannot be asked
    about, a location the API disagrees with, a sensor moved away from its only location,
    an alert at a location nobody registered."""
    lookups: list[str] = []
    page.on(
        "request", lambda r: lookups.append(r.url) if "/api/v1/location/batch/" in r.url else None
    )
    page.goto(dashboard.url + "/")
    expect(page.locator("#live")).to_have_text("Live")
    register(dashboard, "TEMPIOT-C021", "C021", location_name="Compressor")
    # B012's only sensor moves to B011: B012 leaves the board.
    moved = httpx.put(
        dashboard.url + "/api/v1/location/TEMPIOT-B012",
        json={"sensor": {"loc_id": "B011"}},
        headers=OPERATOR,
        timeout=30,
    )
    assert moved.status_code == 200, moved.text
    for n in range(8):
        at = datetime.now(UTC)
        publish_keyed(
            kafka,
            "latest",
            [
                ("bad/id", status("bad/id", "C021", at, "30.0")),
                ("TEMPIOT-C021", status("TEMPIOT-C021", "C021", at, f"2{n}.5")),
                # The stream names another location than the API does.
                ("TEMPIOT-A011", status("TEMPIOT-A011", "A012", at, f"1{n}.5")),
                ("TEMPIOT-B012", status("TEMPIOT-B012", "B011", at, "19.5")),
            ],
        )
        page.wait_for_timeout(300)
    expect(page.locator('.tile[data-loc="C021"] .tile-name')).to_have_text("Compressor")
    expect(page.locator('.tile[data-loc="C021"] dd[data-metric="temperature"]')).to_have_text(
        "27.5 °C"
    )
    # A011's readings are drawn where the API placed the sensor.
    expect(page.locator('.tile[data-loc="A011"] dd[data-metric="temperature"]')).to_have_text(
        "17.5 °C"
    )
    expect(page.locator('.tile[data-loc="B012"]')).to_have_count(0)
    expect(page.locator('.tile[data-loc="B011"] dd[data-metric="temperature"]')).to_have_text(
        "19.5 °C"
    )
    # Asked about once each, not once per reading; the bad id never.
    asked = [u for u in lookups if "TEMPIOT-A011" in u]
    assert len(asked) == 1, lookups
    assert not [u for u in lookups if "bad" in u], lookups
    assert len(lookups) <= 3, lookups

    # An alert at a location nobody registered still counts among the active alerts.
    stray = alert("ZZ99", AlertTransition.RAISED)
    publish_keyed(kafka, "alerts", [(stray.sensor_id, stray)])
    expect(page.locator('.count[data-status="alerts"] strong')).to_have_text(
        str(len(dashboard.alerts) + 1)
    )
    # A newer alert of the same sensor and metric supersedes the one held (the sink does
    # the same in the database): one badge, not two.
    first = alert("B011", AlertTransition.RAISED)
    publish_keyed(kafka, "alerts", [(first.sensor_id, first)])
    expect(page.locator('.tile[data-loc="B011"] .tile-alert')).to_have_text("⚠ Warning")
    second = alert("B011", AlertTransition.RAISED).model_copy(update={"level": Status.CRITICAL})
    publish_keyed(kafka, "alerts", [(second.sensor_id, second)])
    expect(page.locator('.tile[data-loc="B011"] .tile-alert')).to_have_text("⚠ Critical")
    expect(page.locator('.count[data-status="alerts"] strong')).to_have_text(
        str(len(dashboard.alerts) + 2)
    )
