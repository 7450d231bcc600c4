"""The dashboard: the static web UI in ``api/dashboard/``, served by the API itself.

``/`` answers the page, ``/dashboard/...`` its scripts, styles and the chart library (copied
into ``api/dashboard/vendor/`` by ``make dashboard``), and ``/dashboard/config.json`` the
few settings the page needs that no API answer carries.  Apart from that settings file
the page adds no endpoint of its own: it only calls the public API (`/api/v1/...`) like any
other client.

Every answer forbids inline scripts and styles and any other origin
(``Content-Security-Policy``), so data that reached the page could not run as code even if
it were ever put into the document unescaped (the scripts only use ``textContent``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, JSONResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from api.deps import AppSettings

DASHBOARD_DIR = Path(__file__).resolve().parents[1] / "dashboard"
CHART_LIBRARY = DASHBOARD_DIR / "vendor" / "chart.umd.min.js"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none';"
        " form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidated on every load (ETag / Last-Modified): a new release shows at once.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
async def page() -> FileResponse:
    return FileResponse(DASHBOARD_DIR / "index.html", headers=SECURITY_HEADERS)


@router.api_route("/dashboard/config.json", methods=["GET", "HEAD"])
async def config(settings: AppSettings) -> JSONResponse:
    """What the page needs to know of this deployment: when a measurement counts as stale
    (the same rule as ``/realtime``), and whether the chart library is installed."""
    body: dict[str, Any] = {
        "stale_after_s": settings.api.stale_after_s,
        "open_reads": settings.api.open_reads,
        "charts": CHART_LIBRARY.is_file(),
    }
    return JSONResponse(body, headers=SECURITY_HEADERS)


class _Static(StaticFiles):
    """Static files with the dashboard's security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        for name, value in SECURITY_HEADERS.items():
            response.headers[name] = value
        return response


def install(app: FastAPI) -> None:
    """Serve the dashboard from ``app``: the routes above, then the static files (the
    config route must come first, since the mount takes everything under its path)."""
    app.include_router(router)
    app.mount("/dashboard", _Static(directory=DASHBOARD_DIR), name="dashboard")
