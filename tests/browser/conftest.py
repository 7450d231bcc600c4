"""Browser tests of the dashboard: headless Chromium (the Debian package, never a browser
that Playwright downloads) against a real API server on the test's own topics and schema,
with data seeded the way the sinks write it.  Screenshots go to ``build/test-artifacts/``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.masterdata import from_rows, import_master_data
from schemas.aggregates import HourlyAggregate, MetricAggregate
from schemas.alerts import AlertEvent, AlertKind, AlertTransition
from schemas.common import Status
from stream_apps.sinks.aggregates import AggregatesWriter
from stream_apps.sinks.alerts import AlertsWriter
from tests.api_support import OPERATOR, api_settings, live_server

ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "dashboard"
KST = ZoneInfo("Asia/Seoul")

HOSTILE_NAME = '<img src=x onerror="window.injected=1">Paint'
# One location per status the board shows (B013 has no reading at all).
PLACES = [
    ("TEMPIOT-A011", "A011", "SinPyeong", "MX-1", 1, "Storage"),
    ("TEMPIOT-A012", "A012", "SinPyeong", "MX-1", 1, "Assembly 1"),
    ("TEMPIOT-A031", "A031", "SinPyeong", "F-2001", 1, "Assembly 2"),
    ("TEMPIOT-B011", "B011", "JangNim", "JN-A", 2, "Cutting"),
    ("TEMPIOT-B012", "B012", "JangNim", "JN-A", 2, "Welding"),
    # An area that would run a script if it were ever parsed as markup.
    ("TEMPIOT-B013", "B013", "JangNim", "JN-A", 3, HOSTILE_NAME),
]
# loc_id -> (age of the reading, temperature, humidity, pcv, their statuses)
READINGS: dict[str, tuple[timedelta, str, str, str, tuple[str | None, ...]]] = {
    "A011": (timedelta(seconds=10), "24.0", "55.0", "25.1", ("normal", None, "normal")),
    "A012": (timedelta(seconds=10), "30.0", "60.0", "31.5", ("normal", None, "warning")),
    "A031": (timedelta(seconds=10), "33.0", "70.0", "35.2", ("warning", None, "critical")),
    "B011": (timedelta(seconds=10), "22.0", "50.0", "22.4", (None, None, None)),
    "B012": (timedelta(hours=2), "26.0", "50.0", "26.3", ("normal", None, "normal")),
}
EXPECTED_STATUS = {
    "A011": "normal",
    "A012": "warning",
    "A031": "critical",
    "B011": "none",
    "B012": "stale",
    "B013": "stale",
}
ORIGINAL_BANDS = [
    {"threshold_type": "pcv_temperature", "level": level, "min_value": low, "max_value": high}
    for level, low, high in (
        ("green", "0.00", "30.90"),
        ("yellow", "31.00", "32.90"),
        ("orange", "33.00", None),
    )
]


@dataclass
class Dashboard:
    url: str
    settings: Settings
    db: DatabaseSettings
    alerts: dict[str, UUID]  # loc_id -> its active alert

    def api(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, headers=OPERATOR, timeout=10, **kwargs)


def _sql(db: DatabaseSettings) -> psycopg.Connection[Any]:
    conn = psycopg.connect(db.url)
    conn.execute(f'SET search_path TO "{db.db_schema}"')
    return conn


def seed(db: DatabaseSettings, kafka: KafkaSettings) -> dict[str, UUID]:
    """Locations, latest readings, two active alerts and a day of hourly rows of A011 (the
    current hour still open); returns the alerts' ids by location."""
    import_master_data(
        db,
        kafka,
        from_rows(
            {
                "sensor_id": s,
                "loc_id": loc,
                "plant": "P1",
                "factory": f,
                "building": b,
                "floor": str(fl),
                "area": area,
                "location_name": "Paint shop" if area == HOSTILE_NAME else area,
            }
            for s, loc, f, b, fl, area in PLACES
        ),
    )
    now = datetime.now(UTC)
    with _sql(db) as conn:
        for sensor, loc, *_ in PLACES:
            if loc not in READINGS:
                continue
            age, t, h, p, statuses = READINGS[loc]
            conn.execute(
                "INSERT INTO latest_readings (sensor_id, loc_id, capture_dt, temperature,"
                " humidity, pcv_temperature, temperature_status, humidity_status,"
                " pcv_temperature_status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (sensor, loc, now - age, t, h, p, *statuses),
            )
        alerts = {"A012": uuid4(), "A031": uuid4()}
        at = now - timedelta(minutes=5)
        AlertsWriter().write(
            conn,
            [
                AlertEvent(
                    event_id=uuid4(),
                    alert_id=alerts[loc],
                    kind=AlertKind.THRESHOLD,
                    transition=AlertTransition.RAISED,
                    sensor_id=f"TEMPIOT-{loc}",
                    loc_id=loc,
                    metric="pcv_temperature",
                    level=level,
                    measured_value=Decimal(value),
                    threshold_id=1,
                    threshold_level="yellow" if level is Status.WARNING else "orange",
                    threshold_min=Decimal("31.00") if level is Status.WARNING else Decimal("33.00"),
                    threshold_max=Decimal("32.90") if level is Status.WARNING else None,
                    reading_time=at,
                    decided_at=at,
                    message=f"pcv_temperature {value}",
                )
                for loc, level, value in (
                    ("A012", Status.WARNING, "31.50"),
                    ("A031", Status.CRITICAL, "35.20"),
                )
            ],
        )
        hour = now.astimezone(KST).replace(minute=0, second=0, microsecond=0)
        rows = []
        for back in range(12, -1, -1):
            start = hour - timedelta(hours=back)
            pcv = Decimal("26") + Decimal(back % 7)
            rows.append(
                HourlyAggregate(
                    sensor_id="TEMPIOT-A011",
                    loc_id="A011",
                    hour_start=start,
                    ymd=f"{start:%Y%m%d}",
                    hour=f"{start:%H}",
                    temperature=MetricAggregate(
                        count=60, sum=Decimal(60 * 24), min=Decimal(23), max=Decimal(25)
                    ),
                    humidity=MetricAggregate(
                        count=60, sum=Decimal(60 * 55), min=Decimal(50), max=Decimal(62)
                    ),
                    pcv_temperature=MetricAggregate(
                        count=60, sum=60 * (pcv - 1), min=pcv - 2, max=pcv
                    ),
                    is_final=back > 0,
                    updated_at=now,
                )
            )
        AggregatesWriter().write(conn, rows)
        conn.commit()
    return alerts


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Headless Chromium from the system (installed by infra/scripts/install-system-deps.sh).

    Package scope, not session: Playwright's sync API runs an event loop in the main thread
    while it is open, and every later test that calls asyncio.run() would fail."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: run `make system-deps`")
    with sync_playwright() as p:
        found = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield found
        found.close()


@pytest.fixture
def dashboard(stack: Settings, kafka: KafkaSettings, db: DatabaseSettings) -> Iterator[Dashboard]:
    alerts = seed(db, kafka)
    settings = api_settings(stack, kafka, db, stream_ping_s=1.0)
    with live_server(settings) as url:
        for band in ORIGINAL_BANDS:
            r = httpx.post(f"{url}/api/v1/thresholds/", json=band, headers=OPERATOR, timeout=10)
            assert r.status_code == 201, r.text
        yield Dashboard(url, settings, db, alerts)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page (own storage) in English, tablet-sized, that fails the test on a script
    error, a blocked resource (a Content-Security-Policy violation) or a file of the page
    (not an API answer) that is missing, such as the icon."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    found = context.new_page()
    errors: list[str] = []
    found.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    found.on(
        "response",
        lambda r: (
            errors.append(f"{r.status} for {r.url}")
            if r.status >= 400 and "/api/v1/" not in r.url
            else None
        ),
    )
    found.on(
        "console",
        lambda msg: (
            errors.append(f"console: {msg.text}")
            if msg.type == "error" and "Content Security Policy" in msg.text
            else None
        ),
    )
    yield found
    context.close()
    assert not errors, errors


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page: Page, token: str = "op") -> None:
    """Sign in through the header's dialog (the token goes to sessionStorage)."""
    page.get_by_role("button", name="Sign in").first.click()
    page.get_by_label("API token").fill(token)
    page.locator("#login-form").get_by_role("button", name="Sign in").click()
    page.get_by_text("Signed in").wait_for()
