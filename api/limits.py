"""No request body is read before the API knows it may.

FastAPI reads a request's whole body before it resolves the route's dependencies, the token
check among them, so on its own it would spool any amount of data from anyone.
:class:`BodyLimit` (pure ASGI, outermost):

* answers 413 at once when ``Content-Length`` says the body is over its route's limit,
  without reading any of it, and stops a body without a length (chunked) as soon as it
  passes the limit.  The limit is ``api.max_body_bytes``, or larger for the routes that
  need it (the master-data upload);
* checks the token of every write (POST, PUT, PATCH, DELETE): every write needs at least
  the operator role, so a write without one gets its 401 or 403 before any of its body is
  read (the route's own check then decides between operator and admin).
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette._utils import get_route_path
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import CHALLENGE, caller_of, has_role
from api.errors import error_body
from iotmon.settings import Settings


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        # Connection: close, so that the server does not go on reading what is left of it.
        super().__init__(413, f"the request body exceeds {limit:,} bytes", {"Connection": "close"})


WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class BodyLimit:
    def __init__(
        self, app: ASGIApp, settings: Settings, default: int, routes: Mapping[str, int]
    ) -> None:
        self.app = app
        self.settings = settings
        self.default = default
        self.routes = dict(routes)

    def limit_of(self, path: str) -> int:
        return self.routes.get(path.rstrip("/"), self.default)

    def refusal(self, scope: Scope) -> HTTPException | None:
        """Why the request is refused before its body is read, if it is."""
        path = get_route_path(scope)  # without a root_path the app is mounted under
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in headers and name in (b"authorization", b"content-length"):
                return HTTPException(400, f"more than one {name.decode()} header")
            headers[name] = value
        refused = _length_refusal(headers.get(b"content-length"), self.limit_of(path))
        if refused is None and scope["method"] in WRITES and path.startswith("/api/"):
            refused = self._token_refusal(headers.get(b"authorization", b""))
        return refused

    def _token_refusal(self, authorization: bytes) -> HTTPException | None:
        try:
            caller = caller_of(self.settings, authorization.decode("latin-1"))
        except HTTPException as exc:
            return exc
        if caller.role is None:
            return HTTPException(401, "a bearer token is required", CHALLENGE)
        if not has_role(caller, "operator"):
            return HTTPException(403, f"this needs the operator role; the token has {caller.role}")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self.refusal(scope)
        if refused is not None:
            await _refuse(send, refused.status_code, str(refused.detail), refused.headers)
            return
        limit = self.limit_of(get_route_path(scope))
        received = 0

        async def bounded() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised into whoever reads the body (FastAPI re-raises HTTPExceptions
                    # met while parsing), answered as a 413 by the error handlers.
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, bounded, send)


def _length_refusal(raw: bytes | None, limit: int) -> HTTPException | None:
    if raw is None:
        return None
    if not raw.isdigit():
        return HTTPException(400, "Content-Length is not a number")
    if len(raw) > 18 or int(raw) > limit:
        return BodyTooLarge(limit)
    return None


async def _refuse(
    send: Send, status: int, message: str, headers: Mapping[str, str] | None = None
) -> None:
    body = orjson.dumps(error_body(status, message))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
