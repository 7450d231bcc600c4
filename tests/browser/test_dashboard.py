"""The dashboard in headless Chromium against a real API server with seeded data: the
board's colours, the location page, acknowledging an alert, the threshold editor and the
language switch.  Each saves screenshots under build/test-artifacts/dashboard/."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.api_support import OPERATOR, live_server
from tests.browser.conftest import (
    EXPECTED_STATUS,
    HOSTILE_NAME,
    KST,
    Dashboard,
    screenshot,
    sign_in,
)

pytestmark = [pytest.mark.integration, pytest.mark.browser]

# The tiles' backgrounds (css/dashboard.css), per status.
COLOURS = {
    "normal": "rgb(227, 242, 230)",
    "warning": "rgb(255, 241, 194)",
    "critical": "rgb(251, 224, 222)",
    "none": "rgb(230, 236, 245)",
    "stale": "rgb(233, 233, 233)",
}


def open_board(page: Page, dashboard: Dashboard) -> None:
    page.goto(dashboard.url + "/")
    page.locator(".tile").first.wait_for()


def test_board_colours_follow_the_seeded_statuses(page: Page, dashboard: Dashboard) -> None:
    open_board(page, dashboard)
    for loc, status in EXPECTED_STATUS.items():
        tile = page.locator(f'.tile[data-loc="{loc}"]')
        expect(tile).to_have_attribute("data-status", status)
        colour = tile.evaluate("node => getComputedStyle(node).backgroundColor")
        assert colour == COLOURS[status], (loc, status, colour)
    # Status is written out too, not told by colour alone.
    expect(page.locator('.tile[data-loc="B011"] .tile-status')).to_have_text("No threshold")
    expect(page.locator('.tile[data-loc="B012"] .tile-status')).to_have_text("Stale")
    expect(page.locator('.tile[data-loc="B013"] .tile-status')).to_have_text("No readings")
    # Active alerts show on their tiles at a glance.
    expect(page.locator('.tile[data-loc="A031"] .tile-alert')).to_have_text("⚠ Critical")
    expect(page.locator('.tile[data-loc="A012"] .tile-alert')).to_have_text("⚠ Warning")
    expect(page.locator('.tile[data-loc="A011"] .tile-alert')).to_be_hidden()
    # Counts per status at the top.
    counts = {
        s: page.locator(f'.count[data-status="{s}"] strong').inner_text()
        for s in ("normal", "warning", "critical", "none", "stale", "alerts")
    }
    assert counts == {
        "normal": "1",
        "warning": "1",
        "critical": "1",
        "none": "1",
        "stale": "2",
        "alerts": "2",
    }
    expect(page.locator('.tile[data-loc="A031"] dd[data-metric="pcv_temperature"]')).to_have_text(
        "35.2 °C"
    )
    expect(page.locator("#live")).to_have_text("Live", timeout=15_000)  # both streams open
    screenshot(page, "board")
    # Filters: one factory, then one floor of it.
    page.get_by_label("Factory").select_option("JangNim")
    expect(page.locator(".tile:visible")).to_have_count(3)
    page.get_by_label("Floor").select_option("3")
    expect(page.locator(".tile:visible")).to_have_count(1)
    expect(page.locator('.count[data-status="stale"] strong')).to_have_text("1")


def test_location_page_charts_bands_and_history(page: Page, dashboard: Dashboard) -> None:
    page.goto(dashboard.url + "/#/location/A011")
    expect(page.locator("main")).to_have_attribute("data-charts", "3")
    expect(page.locator("canvas")).to_have_count(3)
    expect(page.locator(".provisional")).to_contain_text("provisional")
    expect(page.locator('.chart[data-metric="pcv_temperature"] .bands')).to_contain_text(
        "yellow 31–32.9"
    )
    # A band open above reads as such, not as a range cut short.
    expect(page.locator('.chart[data-metric="pcv_temperature"] .bands')).to_contain_text(
        "orange ≥ 33"
    )
    expect(page.get_by_role("heading", name="Alert history")).to_be_visible()
    # The week view asks the API for seven local days.
    with page.expect_response(re.compile(r"/api/v1/aggregation/.*start_date=\d{8}")) as answer:
        page.get_by_label("7 days").check()
        page.get_by_role("button", name="Show").click()
    assert answer.value.status == 200
    expect(page.locator("main")).to_have_attribute("data-charts", "3")
    page.goto(dashboard.url + "/#/location/A031")
    expect(page.locator("table tbody tr")).to_have_count(1)
    # Data is text, never markup: B013's area is an <img> tag with an onerror handler.
    page.goto(dashboard.url + "/#/location/B013")
    expect(page.locator("main .note").first).to_contain_text(HOSTILE_NAME)
    assert page.evaluate("() => window.injected") is None
    assert page.locator("main img").count() == 0
    page.goto(dashboard.url + "/#/location/A011?range=day")
    expect(page.locator("main")).to_have_attribute("data-charts", "3")
    expect(page.locator("#live")).to_have_text("Live", timeout=15_000)
    page.wait_for_timeout(300)  # the charts' first paint
    screenshot(page, "location")


def test_acknowledging_an_alert_in_the_console(page: Page, dashboard: Dashboard) -> None:
    alert_id = str(dashboard.alerts["A031"])
    page.goto(dashboard.url + "/#/alerts")
    rows = page.locator("#active-h ~ .table-wrap tbody tr")
    expect(rows).to_have_count(2)
    # Critical first.
    expect(rows.first).to_have_attribute("data-alert", alert_id)
    sign_in(page)
    # The token is kept for this tab only, and never put into a URL.
    assert page.evaluate("() => sessionStorage.getItem('iotmon.token')") == "op"
    assert page.evaluate("() => Object.keys(localStorage)") in ([], ["iotmon.lang"])
    assert "op" not in page.url.split("#")[0] and "token" not in page.url
    rows.first.get_by_role("button", name="Acknowledge").click()
    page.get_by_label("Note").fill("fans on, checking")
    page.locator("dialog[open]").get_by_role("button", name="Acknowledge alert").click()
    expect(rows.first.locator("td.ack")).to_contain_text("token:operator")
    body = httpx.get(
        f"{dashboard.url}/api/v1/alerts/{alert_id}", headers=OPERATOR, timeout=10
    ).json()
    assert body["acknowledged_by"] == "token:operator"
    assert body["ack_note"] == "fans on, checking"
    expect(rows.first.get_by_role("button", name="Acknowledge")).to_be_disabled()
    # Keyboard focus stays on the same row, on its next button.
    expect(rows.first.get_by_role("button", name="Resolve")).to_be_focused()
    expect(page.locator("#live")).to_have_text("Live", timeout=15_000)
    screenshot(page, "alerts")


def test_threshold_editor_creates_and_shows_the_validation_error(
    page: Page, dashboard: Dashboard
) -> None:
    page.goto(dashboard.url + "/#/thresholds")
    expect(page.locator("#th-table tbody tr")).to_have_count(3)
    sign_in(page)
    form = page.locator("#th-form")
    form.get_by_label("Metric").select_option("humidity")
    form.get_by_label("Level").select_option("high")
    form.get_by_label("Min").fill("80")
    form.get_by_label("Max").fill("100")
    # An emptied hold time is refused by the form (it is neither 0 nor a silent default).
    form.locator("#th-hold").fill("")
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    form.get_by_role("button", name="Add").click()
    expect(page.locator("#th-error [role=alert]")).to_contain_text("Hold (s): a value is required")
    page.wait_for_timeout(300)
    assert posts == []
    expect(page.locator("#th-table tbody tr")).to_have_count(3)
    form.locator("#th-hold").fill("60")
    form.get_by_role("button", name="Add").click()
    expect(page.locator("#th-table tbody tr")).to_have_count(4)
    bands = httpx.get(f"{dashboard.url}/api/v1/thresholds/type/humidity", timeout=10).json()
    assert [(b["level"], b["min_value"], b["max_value"], b["hold_seconds"]) for b in bands] == [
        ("high", "80.00", "100.00", 60)
    ]
    # max < min: the API refuses it with 422, and its message is shown as it is.
    form.get_by_label("Metric").select_option("pcv_temperature")
    form.get_by_label("Min").fill("35")
    form.get_by_label("Max").fill("30")
    form.get_by_role("button", name="Add").click()
    error = page.locator("#th-error [role=alert]")
    expect(error).to_contain_text("max_value must be greater than min_value")
    assert len(httpx.get(f"{dashboard.url}/api/v1/thresholds/", timeout=10).json()) == 4
    # The earlier "Saved." does not stand beside the error.
    expect(page.locator("#th-status")).not_to_contain_text("Saved")
    # Dates in English are in ISO order (05/12/2026 is a different day in the UK and US).
    updated = page.locator("#th-table tbody tr td:nth-child(10)").first
    expect(updated).to_have_text(re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}$"))
    screenshot(page, "thresholds")


def test_language_switch_changes_the_labels(page: Page, dashboard: Dashboard) -> None:
    open_board(page, dashboard)  # an English browser gets English
    nav = page.get_by_role("navigation")
    expect(nav.get_by_role("link", name="Plant board")).to_be_visible()
    expect(page.locator('.tile[data-loc="A011"] .tile-status')).to_have_text("Normal")
    page.get_by_label("Language").select_option("ko")
    expect(nav.get_by_role("link", name="현황판")).to_be_visible()
    expect(page.locator("h1")).to_have_text("현황판")
    expect(page.locator('.tile[data-loc="A011"] .tile-status')).to_have_text("정상")
    expect(page.locator('.tile[data-loc="A011"] dt').first).to_have_text("온도")
    assert page.evaluate("() => document.documentElement.lang") == "ko"
    page.reload()  # the choice is kept
    expect(page.locator("h1")).to_have_text("현황판")
    page.get_by_label("언어").select_option("en")
    expect(page.locator("h1")).to_have_text("Plant board")


def test_korean_browsers_get_korean(browser, dashboard: Dashboard) -> None:
    context = browser.new_context(locale="ko-KR")
    try:
        page = context.new_page()
        page.goto(dashboard.url + "/")
        expect(page.locator("h1")).to_have_text("현황판")
    finally:
        context.close()


def test_served_with_a_strict_content_security_policy(dashboard: Dashboard) -> None:
    r = httpx.get(dashboard.url + "/", timeout=10)
    assert r.status_code == 200
    policy = r.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "<script>" not in r.text  # no inline script
    js = httpx.get(dashboard.url + "/dashboard/js/main.js", timeout=10)
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert js.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(dashboard.url + "/dashboard/../pyproject.toml", timeout=10).status_code == 404
    config = httpx.get(dashboard.url + "/dashboard/config.json", timeout=10).json()
    assert config["stale_after_s"] == dashboard.settings.api.stale_after_s


def test_subscriptions_and_silences_in_the_console(page: Page, dashboard: Dashboard) -> None:
    page.goto(dashboard.url + "/#/alerts")
    subscriptions = page.locator("section[aria-labelledby=subs-h]")
    silences = page.locator("section[aria-labelledby=sil-h]")
    expect(subscriptions).to_contain_text("sign in to see them")  # personal data
    sign_in(page)
    form = subscriptions.locator("form")
    form.get_by_label("Subscriber").fill("kim")
    form.get_by_label("Channel").select_option("webhook")
    form.get_by_label("Target").fill("not a url")
    form.get_by_role("button", name="Save").click()
    expect(subscriptions.locator("[role=alert]")).to_contain_text("http:// or https:// URL")
    form.get_by_label("Target").fill("https://hooks.example.com/iotmon")
    form.get_by_label("factory").fill("SinPyeong")
    form.get_by_role("button", name="Save").click()
    expect(subscriptions.locator("tbody tr")).to_have_count(1)
    made = httpx.get(f"{dashboard.url}/api/v1/subscriptions/", headers=OPERATOR, timeout=10).json()
    assert [(s["subscriber"], s["notify_type"], s["factory"]) for s in made] == [
        ("kim", "webhook", "SinPyeong")
    ]
    subscriptions.get_by_role("button", name="Disable").click()
    expect(subscriptions.get_by_role("button", name="Enable")).to_be_visible()

    expect(silences).to_be_visible()
    form = silences.locator("form")
    form.get_by_label("factory").fill("JangNim")
    day = (datetime.now(KST) + timedelta(days=2)).date()
    form.get_by_label("Ends").fill(f"{day.isoformat()}T09:00")
    form.get_by_label("Reason").fill("cooling maintenance")
    form.get_by_role("button", name="Add").click()
    expect(silences.locator("tbody tr")).to_have_count(1)
    (made,) = httpx.get(f"{dashboard.url}/api/v1/silences/", headers=OPERATOR, timeout=10).json()
    assert made["factory"] == "JangNim" and made["reason"] == "cooling maintenance"
    # 09:00 in JangNim's zone (Asia/Seoul) is 00:00 UTC.
    assert made["ends_at"].startswith(f"{day.isoformat()}T00:00:00")
    silences.get_by_role("button", name="End now").click()
    expect(silences).to_contain_text("No current or upcoming silences.")
    ended = httpx.get(
        f"{dashboard.url}/api/v1/silences/{made['silence_id']}", headers=OPERATOR, timeout=10
    ).json()
    assert ended["ended_by"] == "token:operator"


def test_closed_reads_ask_for_a_token_first(page: Page, dashboard: Dashboard) -> None:
    settings = dashboard.settings.model_copy(
        update={"api": dashboard.settings.api.model_copy(update={"open_reads": False})}
    )
    with live_server(settings) as url:
        page.goto(url + "/")
        expect(page.locator("main [role=alert]")).to_contain_text("a bearer token is required")
        page.locator("main").get_by_role("button", name="Sign in").click()
        page.get_by_label("API token").fill("view")
        page.locator("#login-form").get_by_role("button", name="Sign in").click()
        expect(page.locator('.tile[data-loc="A031"]')).to_have_attribute("data-status", "critical")
        # The live streams carry the token too, once the API asked for it.
        expect(page.locator("#live")).to_have_text("Live", timeout=15_000)


def test_a_malformed_address_shows_an_error(page: Page, dashboard: Dashboard) -> None:
    open_board(page, dashboard)
    page.evaluate("() => { window.location.hash = '#/location/%E0%A4%A'; }")
    expect(page.locator("main [role=alert]")).to_contain_text("This address cannot be read")
    expect(page.locator(".tile")).to_have_count(0)  # the board is not left standing
    page.evaluate("() => { window.location.hash = '#/board'; }")
    expect(page.locator('.tile[data-loc="A011"]')).to_be_visible()


def test_an_unknown_token_asks_to_sign_in_again(page: Page, dashboard: Dashboard) -> None:
    page.goto(dashboard.url + "/")
    page.evaluate("() => sessionStorage.setItem('iotmon.token', 'no-such-token')")
    page.reload()
    expect(page.locator("#notice [role=alert]")).to_contain_text("Please sign in again")
    expect(page.locator("#login-button")).to_have_text("Sign in")
    assert page.evaluate("() => sessionStorage.getItem('iotmon.token')") is None
    # Reads are open here: the board is read again without the token.
    expect(page.locator('.tile[data-loc="A031"]')).to_have_attribute("data-status", "critical")


def test_head_requests_are_answered(dashboard: Dashboard) -> None:
    assert httpx.head(dashboard.url + "/", timeout=10).status_code == 200
    assert httpx.head(dashboard.url + "/dashboard/js/main.js", timeout=10).status_code == 200
    assert httpx.head(dashboard.url + "/dashboard/config.json", timeout=10).status_code == 200
