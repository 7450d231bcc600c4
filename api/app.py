"""The FastAPI application (`iotmon api`): composition root, no I/O at import."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from api import errors
from api.changes import DataChanges
from api.routers import (
    aggregation,
    alerts,
    health,
    location,
    realtime,
    stream,
    subscriptions,
    thresholds,
)
from iotmon.runtime import settle_heap
from iotmon.settings import Settings

log = logging.getLogger(__name__)


def _report_listener_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "the change listener stopped; realtime answers are no longer reused",
            exc_info=task.exception(),
        )


def create_app(settings: Settings, *, settle: bool = False) -> FastAPI:
    """The app for these settings; the database pool opens in the lifespan.  ``settle``:
    this process serves only the app, so settle its heap once it has started
    (:func:`iotmon.runtime.settle_heap`)."""

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(
            sql.SQL("SET search_path TO {}").format(sql.Identifier(settings.db.db_schema))
        )
        # Aggregation queries sort and group up to a few hundred thousand hourly rows; keep
        # that in memory rather than in temporary files.
        await conn.execute(
            sql.SQL("SET work_mem TO {}").format(sql.Literal(settings.api.query_work_mem))
        )
        await conn.commit()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = AsyncConnectionPool(
            settings.db.url,
            min_size=settings.api.pool_min_size,
            max_size=settings.api.pool_max_size,
            configure=configure,
            open=False,
        )
        await pool.open()
        app.state.pool = pool
        changes = DataChanges(settings.db.url, settings.db.db_schema)
        app.state.changes = changes
        listening = asyncio.create_task(changes.run(), name="change-notifications")
        listening.add_done_callback(_report_listener_end)
        if settle:
            settle_heap()
        try:
            yield
        finally:
            listening.cancel()
            await asyncio.wait([listening])
            await pool.close()

    app = FastAPI(title="iotmon", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = CollectorRegistry()
    errors.install(app)
    app.include_router(health.router)
    found = errors.responses(404)
    for router, extra in (
        (thresholds.router, found),
        (location.router, {**found, **errors.responses(409, 413)}),
        (aggregation.router, {}),
        (realtime.router, {}),
        (alerts.router, {**found, **errors.responses(409)}),
        (subscriptions.router, found),
        (stream.router, {}),
    ):
        app.include_router(router, prefix="/api/v1", responses={**errors.COMMON, **extra})
    return app
