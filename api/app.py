"""The FastAPI application (`iotmon api`): composition root, no I/O at import."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from api import errors
from api.changes import DataChanges
from api.latest import LatestStatuses
from api.limits import BodyLimit
from api.poison import PoisonRecords
from api.routers import (
    aggregation,
    alerts,
    dashboard,
    health,
    location,
    realtime,
    silences,
    stream,
    subscriptions,
    thresholds,
)
from iotmon.kafka_records import install_lenient_header_names
from iotmon.runtime import settle_heap
from iotmon.settings import Settings

log = logging.getLogger(__name__)


def _report_end(what: str) -> Callable[[asyncio.Task[None]], None]:
    def report(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s stopped", what, exc_info=task.exception())

    return report


def create_app(settings: Settings, *, settle: bool = False) -> FastAPI:
    """The app for these settings; the database pool opens in the lifespan.  ``settle``:
    this process serves only the app, so settle its heap once it has started
    (:func:`iotmon.runtime.settle_heap`)."""
    install_lenient_header_names()  # its topic readers are aiokafka consumers

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
        tasks = [asyncio.create_task(changes.run(), name="change-notifications")]
        tasks[0].add_done_callback(
            _report_end("the change listener (realtime answers are no longer reused)")
        )
        if settings.api.realtime_from_topic:
            statuses = LatestStatuses(settings.kafka, poison=app.state.poison)
            app.state.statuses = statuses
            tasks.append(asyncio.create_task(statuses.run(), name="latest-statuses"))
            tasks[1].add_done_callback(
                _report_end("the latest-topic reader (realtime answers show the database's rows)")
            )
        if settle:
            settle_heap()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            await pool.close()
            await asyncio.to_thread(app.state.poison.close)
            readiness = getattr(app.state, "readiness", None)
            if readiness is not None:
                readiness.close()

    app = FastAPI(title="iotmon", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = CollectorRegistry()
    app.state.poison = PoisonRecords(settings.kafka, app.state.registry)
    errors.install(app)
    app.add_middleware(
        BodyLimit,
        settings=settings,
        default=settings.api.max_body_bytes,
        routes={"/api/v1/location/upload": location.MAX_UPLOAD_REQUEST_BYTES},
    )
    app.include_router(health.router)
    found = errors.responses(404)
    for router, extra in (
        (thresholds.router, found),
        (location.router, {**found, **errors.responses(409, 413)}),
        (aggregation.router, {}),
        (realtime.router, {}),
        (alerts.router, {**found, **errors.responses(409)}),
        (subscriptions.router, found),
        (silences.router, {**found, **errors.responses(409)}),
        (stream.router, errors.responses(429)),
    ):
        app.include_router(router, prefix="/api/v1", responses={**errors.COMMON, **extra})
    dashboard.install(app)  # the web UI at /, last: its static mount takes /dashboard/*
    return app
