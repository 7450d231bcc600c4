"""Typed dependencies, declared once: the database connection, the caller's role, settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import psycopg
from fastapi import Depends, HTTPException, Request
from psycopg_pool import AsyncConnectionPool

from iotmon.settings import Settings

Role = Literal["viewer", "operator", "admin"]
_RANK = {"viewer": 0, "operator": 1, "admin": 2}


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_conn(request: Request) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    pool: AsyncConnectionPool = request.app.state.pool
    async with pool.connection() as conn:
        yield conn


def caller_role(request: Request) -> Role | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    settings: Settings = request.app.state.settings
    role = settings.api.tokens.get(token.strip())
    if role is None:
        raise HTTPException(401, "unknown or expired token", {"WWW-Authenticate": "Bearer"})
    return role


def require(minimum: Role, *, reads: bool = False) -> Any:
    """A dependency that admits callers with at least ``minimum``; with ``reads=True`` it
    admits everyone when the deployment leaves reads open."""

    def check(request: Request) -> Role | None:
        settings: Settings = request.app.state.settings
        if reads and settings.api.open_reads:
            return None
        role = caller_role(request)
        if role is None:
            raise HTTPException(401, "a bearer token is required", {"WWW-Authenticate": "Bearer"})
        if _RANK[role] < _RANK[minimum]:
            raise HTTPException(403, f"this needs the {minimum} role; the token has {role}")
        return role

    return Depends(check)


Conn = Annotated[psycopg.AsyncConnection[Any], Depends(get_conn)]
AppSettings = Annotated[Settings, Depends(get_settings)]
CanRead = require("viewer", reads=True)
CanOperate = require("operator")
CanAdmin = require("admin")
