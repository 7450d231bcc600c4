"""Operations: liveness, readiness (database and Kafka), Prometheus metrics."""

from __future__ import annotations

from typing import Any

from confluent_kafka.admin import AdminClient
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from api.deps import AppSettings, Conn

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def _kafka_answers(bootstrap: str) -> bool:
    try:
        AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000}).list_topics(
            timeout=2
        )
    except Exception:  # noqa: BLE001 - any failure means not ready
        return False
    return True


@router.get("/ready", responses={503: {"description": "a dependency does not answer"}})
async def ready(conn: Conn, settings: AppSettings) -> Any:
    checks: dict[str, bool] = {}
    try:
        await conn.execute("SELECT 1")
        checks["database"] = True
    except Exception:  # noqa: BLE001 - reported, not hidden: the answer is 503
        checks["database"] = False
    checks["kafka"] = await run_in_threadpool(_kafka_answers, settings.kafka.bootstrap_servers)
    status = 200 if all(checks.values()) else 503
    return JSONResponse({"ready": status == 200, "checks": checks}, status)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
