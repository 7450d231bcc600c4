"""One JSON error body for every 4xx/5xx: {"error": {"status", "message", "details"}}."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    status: int
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    """The body of every 4xx/5xx answer."""

    error: ErrorDetail


_DESCRIPTIONS = {
    400: "the request body cannot be parsed",
    401: "no bearer token, or one that is not valid",
    403: "the token's role is too low",
    404: "no such resource",
    409: "the change conflicts with the resource's state",
    413: "the request body is too large",
    422: "a parameter or the body is invalid; the message names it",
    429: "this client has its share of live streams open",
    503: "the database or Kafka is unavailable; retry later",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for these error statuses, all with the one error body."""
    return {code: {"model": ErrorResponse, "description": _DESCRIPTIONS[code]} for code in codes}


# Every route may answer these: bad body, missing/bad token, too low a role, a body over
# the limit, invalid input, a dependency down.
COMMON = responses(400, 401, 403, 413, 422, 503)


def error_body(status: int, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"status": status, "message": message, "details": details}}


def install(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(exc.status_code, str(exc.detail)),
            exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()
        ]
        # Each problem with where it is and what is wrong ("body.floor: Input should be a
        # valid integer"; a check of the whole body says only "body: Value error, ...").
        said = "; ".join(f"{'.'.join(str(p) for p in d['loc'])}: {d['msg']}" for d in details[:5])
        more = f" (and {len(details) - 5} more)" if len(details) > 5 else ""
        return JSONResponse(error_body(422, f"invalid request: {said}{more}", details), 422)

    @app.exception_handler(psycopg.DataError)
    async def bad_value(_: Request, exc: psycopg.DataError) -> JSONResponse:
        # A value the database cannot take (a NUL byte in text, a number out of its
        # column's range) is the caller's input, not our failure.
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return JSONResponse(error_body(422, f"invalid value: {message}"), 422)

    @app.exception_handler(psycopg.OperationalError)
    async def database_down(_: Request, exc: psycopg.OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return JSONResponse(
            error_body(503, "the database is unavailable; retry later"),
            503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, "internal error; see the server log"), 500)


__all__ = ["HTTPException", "error_body", "install"]
