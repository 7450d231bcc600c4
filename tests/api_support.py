"""Support for HTTP tests of the API: settings for one test, and a real server on a port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from api.app import create_app
from iotmon.settings import DatabaseSettings, KafkaSettings, Settings

TOKENS = {"view": "viewer", "op": "operator", "adm": "admin"}
VIEWER = {"Authorization": "Bearer view"}
OPERATOR = {"Authorization": "Bearer op"}
ADMIN = {"Authorization": "Bearer adm"}


def api_settings(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings, **api: Any
) -> Settings:
    """The stack's settings with this test's topics and schema, and the tokens above."""
    return stack.model_copy(
        update={
            "kafka": kafka,
            "db": db,
            "api": stack.api.model_copy(update={"tokens": TOKENS, **api}),
        }
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def live_server(settings: Settings) -> Iterator[str]:
    """The app served by uvicorn on a free local port (a real socket); yields its base URL."""
    port = _free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
