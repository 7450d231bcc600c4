"""The FastAPI application (`iotmon api`): composition root, no I/O at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from api import errors
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
from iotmon.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    """The app for these settings; the database pool opens in the lifespan."""

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(
            sql.SQL("SET search_path TO {}").format(sql.Identifier(settings.db.db_schema))
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
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(title="iotmon", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = CollectorRegistry()
    errors.install(app)
    app.include_router(health.router)
    app.include_router(thresholds.router, prefix="/api/v1")
    app.include_router(location.router, prefix="/api/v1")
    app.include_router(aggregation.router, prefix="/api/v1")
    app.include_router(realtime.router, prefix="/api/v1")
    app.include_router(alerts.router, prefix="/api/v1")
    app.include_router(subscriptions.router, prefix="/api/v1")
    app.include_router(stream.router, prefix="/api/v1")
    return app
