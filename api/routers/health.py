"""Operations: liveness, readiness (database and Kafka), Prometheus metrics."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from confluent_kafka.admin import AdminClient
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import AsyncConnectionPool
from starlette.concurrency import run_in_threadpool

from api.deps import AppSettings
from iotmon.settings import KafkaSettings, Settings

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


class Readiness:
    """The answer of ``/ready``, shared by the requests of ``ttl_s`` seconds: one probe at a
    time, with one long-lived Kafka admin client, and a database connection held only for
    its ``SELECT 1`` (a probe storm neither builds clients nor drains the pool)."""

    def __init__(self, kafka: KafkaSettings, ttl_s: float = 2.0) -> None:
        self.kafka = kafka
        self.ttl_s = ttl_s
        self._admin: AdminClient | None = None
        self._admin_lock = threading.Lock()
        self._lock = asyncio.Lock()
        self._answer: tuple[float, dict[str, bool]] | None = None
        self.probes = 0

    def _kafka_answers(self) -> bool:
        try:
            with self._admin_lock:  # a probe left running by a cancelled request, too
                if self._admin is None:
                    self._admin = AdminClient(
                        {**self.kafka.client_config(), "socket.timeout.ms": 2000}
                    )
                admin = self._admin
            admin.list_topics(timeout=2)
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False
        return True

    def close(self) -> None:
        """Let go of the Kafka client (its threads end when it is collected)."""
        with self._admin_lock:
            self._admin = None

    async def _database_answers(self, pool: AsyncConnectionPool) -> bool:
        try:
            async with pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
        except Exception:  # noqa: BLE001 - reported, not hidden: the answer is 503
            return False
        return True

    async def checks(self, pool: AsyncConnectionPool) -> dict[str, bool]:
        async with self._lock:
            now = time.monotonic()
            if self._answer is None or now - self._answer[0] >= self.ttl_s:
                self.probes += 1
                checks = {
                    "database": await self._database_answers(pool),
                    "kafka": await run_in_threadpool(self._kafka_answers),
                }
                self._answer = (time.monotonic(), checks)
            return self._answer[1]


def _readiness(request: Request, settings: Settings) -> Readiness:
    found: Readiness | None = getattr(request.app.state, "readiness", None)
    if found is None:
        found = request.app.state.readiness = Readiness(settings.kafka, settings.api.ready_cache_s)
    return found


@router.get("/ready", responses={503: {"description": "a dependency does not answer"}})
async def ready(request: Request, settings: AppSettings) -> Any:
    checks = await _readiness(request, settings).checks(request.app.state.pool)
    status = 200 if all(checks.values()) else 503
    return JSONResponse({"ready": status == 200, "checks": dict(checks)}, status)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
