"""Typed dependencies, declared once: the database connection, the caller, settings.

A caller proves who they are with ``Authorization: Bearer <token>``: a static token from
settings (``api.tokens``) or a JWT signed with HS256 by ``api.jwt_secret``.  Roles rank
viewer < operator < admin.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import jwt
import psycopg
from fastapi import Depends, HTTPException, Request
from psycopg_pool import AsyncConnectionPool

from iotmon.settings import Settings

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
_RANK = {role: n for n, role in enumerate(ROLES)}
CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class Caller:
    """Who is calling: ``name`` is the JWT subject, or ``token:<role>`` for a static token,
    or ``anonymous`` for an open read."""

    name: str
    role: Role | None


ANONYMOUS = Caller("anonymous", None)


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_conn(request: Request) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    pool: AsyncConnectionPool = request.app.state.pool
    async with pool.connection() as conn:
        yield conn


def _role_of(claims: dict[str, Any]) -> Role | None:
    named: list[Any] = []
    if isinstance(claims.get("role"), str):
        named.append(claims["role"])
    if isinstance(claims.get("roles"), list):
        named.extend(claims["roles"])
    roles: list[Role] = [r for r in ROLES if r in named]
    return roles[-1] if roles else None


def decode_jwt(settings: Settings, token: str) -> Caller:
    """The caller a JWT names; 401 when it is not valid for this deployment."""
    api = settings.api
    if api.jwt_secret is None:
        raise HTTPException(401, "unknown token", CHALLENGE)
    try:
        claims = jwt.decode(
            token,
            api.jwt_secret.get_secret_value(),
            algorithms=["HS256"],
            issuer=api.jwt_issuer,
            audience=api.jwt_audience,
            options={"require": ["exp"], "verify_aud": api.jwt_audience is not None},
        )
    except jwt.ExpiredSignatureError:
        raise HTTPException(401, "the token has expired", CHALLENGE) from None
    except jwt.InvalidTokenError as exc:
        raise HTTPException(401, f"invalid token: {exc}", CHALLENGE) from None
    role = _role_of(claims)
    if role is None:
        raise HTTPException(403, "the token carries no role (viewer, operator or admin)")
    subject = str(claims.get("sub") or f"jwt:{role}")
    # Names the API gives callers itself, or writes itself for who acted: a token must not
    # pass for a static token, for no one, or for someone acting on another's behalf.
    if subject.startswith("token:") or subject == "anonymous" or "(by " in subject:
        raise HTTPException(
            401, f"invalid token: the subject {subject[:40]!r} is reserved", CHALLENGE
        )
    return Caller(subject, role)


def issue_jwt(settings: Settings, subject: str, role: Role, ttl_s: int) -> str:
    """A token for ``subject`` with ``role``, valid for ``ttl_s`` seconds (``iotmon token``)."""
    import time  # noqa: PLC0415

    if settings.api.jwt_secret is None:
        raise ValueError("set IOTMON_API__JWT_SECRET to issue tokens")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "role": role, "iat": now, "exp": now + ttl_s}
    if settings.api.jwt_issuer:
        claims["iss"] = settings.api.jwt_issuer
    if settings.api.jwt_audience:
        claims["aud"] = settings.api.jwt_audience
    token: str = jwt.encode(claims, settings.api.jwt_secret.get_secret_value(), algorithm="HS256")
    return token


def static_token_role(settings: Settings, token: str) -> Role | None:
    """The role of a static token, compared with every configured token in constant time
    (no early exit), so that response times tell nothing about how much of one matched."""
    given = token.encode()
    found: Role | None = None
    for known, role in settings.api.tokens.items():
        if hmac.compare_digest(known.encode(), given):
            found = role
    return found


def authenticate(request: Request) -> Caller:
    """The caller of this request (ANONYMOUS without a bearer token); 401 for a bad one."""
    return caller_of(request.app.state.settings, request.headers.get("authorization", ""))


def caller_of(settings: Settings, header: str) -> Caller:
    """The caller an ``Authorization`` header names (ANONYMOUS without a bearer token);
    401 for a bad one."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return ANONYMOUS
    role = static_token_role(settings, token)
    if role is not None:
        return Caller(f"token:{role}", role)
    if token.count(".") == 2:
        return decode_jwt(settings, token)
    raise HTTPException(401, "unknown token", CHALLENGE)


def has_role(caller: Caller, minimum: Role) -> bool:
    return caller.role is not None and _RANK[caller.role] >= _RANK[minimum]


def require(minimum: Role, *, reads: bool = False) -> Any:
    """A dependency that admits callers with at least ``minimum``; with ``reads=True`` it
    admits everyone when the deployment leaves reads open."""

    async def check(request: Request) -> Caller:
        settings: Settings = request.app.state.settings
        caller = authenticate(request)
        if reads and settings.api.open_reads:
            return caller
        if caller.role is None:
            raise HTTPException(401, "a bearer token is required", CHALLENGE)
        if _RANK[caller.role] < _RANK[minimum]:
            raise HTTPException(403, f"this needs the {minimum} role; the token has {caller.role}")
        return caller

    return Depends(check)


Conn = Annotated[psycopg.AsyncConnection[Any], Depends(get_conn)]
AppSettings = Annotated[Settings, Depends(get_settings)]
CanRead = require("viewer", reads=True)
# Personal data (subscribers and their addresses, the notification log): never anonymous,
# whatever open_reads says.
CanReadPrivate = require("viewer")
Reader = Annotated[Caller, CanRead]
PrivateReader = Annotated[Caller, CanReadPrivate]
CanOperate = require("operator")
CanAdmin = require("admin")
Operator = Annotated[Caller, CanOperate]
