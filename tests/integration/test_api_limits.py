"""The API does no work for a request before it knows it may: bodies over their route's limit
are refused before they are read (a real server, raw sockets), and the token is checked
before a database connection is taken (a database that does not answer)."""

from __future__ import annotations

import re
import socket
import threading
from uuid import uuid4

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from tests.api_support import OPERATOR, api_settings, live_server

pytestmark = pytest.mark.integration

MB = 1024 * 1024
HUNDRED_MB = 100 * MB


def _open(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and the bytes read until the server closed or sent the whole small body."""
    data = b""
    sock.settimeout(10)
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        None,
    )
    while length is not None and len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body


@pytest.fixture
def settings(stack: Settings, kafka: KafkaSettings, db: DatabaseSettings) -> Settings:
    return api_settings(stack, kafka, db)


def test_an_anonymous_100_mb_body_is_refused_before_it_is_read(settings: Settings) -> None:
    with live_server(settings) as base, _open(base) as sock:
        sock.sendall(
            b"POST /api/v1/thresholds/ HTTP/1.1\r\nHost: api\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {HUNDRED_MB}\r\n\r\n".encode()
            + b"{" * 65536
        )
        # Answered with 64 KiB of the 100 MB sent: the server read no more than that.
        status, body = _response(sock)
    assert status == 413, body
    assert b"262,144 bytes" in body


@pytest.mark.parametrize(
    ("authorization", "status"),
    [(b"", 401), (b"Authorization: Bearer view\r\n", 403), (b"Authorization: Bearer x\r\n", 401)],
)
def test_a_write_without_the_right_token_is_refused_before_its_body_is_read(
    settings: Settings, authorization: bytes, status: int
) -> None:
    """Under the upload's own limit (5 MiB), but without an operator token: refused with
    the first 1 KiB of the 4 MiB sent."""
    with live_server(settings) as base, _open(base) as sock:
        sock.sendall(
            b"POST /api/v1/location/upload HTTP/1.1\r\nHost: api\r\n"
            + authorization
            + b"Content-Type: multipart/form-data; boundary=b\r\n"
            + f"Content-Length: {4 * MB}\r\n\r\n".encode()
            + b"-" * 1024
        )
        got, body = _response(sock)
    assert got == status, body
    assert b"token" in body or b"role" in body


def test_a_chunked_body_is_cut_off_at_the_limit(settings: Settings) -> None:
    sent = 0
    answered = threading.Event()
    refused: list[BaseException] = []

    def send_forever(sock: socket.socket) -> None:
        nonlocal sent
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        try:
            while sent < HUNDRED_MB and not answered.is_set():
                sock.sendall(chunk)
                sent += 65536
        except OSError as exc:  # the server closed the connection after its answer
            refused.append(exc)

    with live_server(settings) as base, _open(base) as sock:
        sock.sendall(
            b"POST /api/v1/subscriptions/ HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer op\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        sender = threading.Thread(target=send_forever, args=(sock,), daemon=True)
        sender.start()
        status, body = _response(sock)
        answered.set()
        at_answer = sent
        sender.join(30)
    assert status == 413, body
    # What was sent when the answer came is the limit plus what the sockets' buffers hold:
    # far from 100 MB.
    assert at_answer < 32 * MB, at_answer


def test_uploads_have_their_own_larger_limit(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        header = "sensor_id,loc_id,factory\n"
        small = header + "TEMPIOT-A011,A011,F1\n" * (MB // 24)  # ~1 MB: over the default
        r = client.post(
            "/api/v1/location/upload",
            files={"file": ("plant.csv", small.encode(), "text/csv")},
            headers=OPERATOR,
        )
        assert r.status_code != 413, r.text
        big = b"x" * (6 * MB)
        r = client.post(
            "/api/v1/location/upload",
            files={"file": ("plant.csv", big, "text/csv")},
            headers=OPERATOR,
        )
        assert r.status_code == 413, r.text
        r = client.post("/api/v1/thresholds/", content=b"{" * MB, headers=OPERATOR)
        assert r.status_code == 413 and "262,144" in r.json()["error"]["message"]


_VALUES = {
    "metric": "temperature",
    "threshold_type": "temperature",
    "floor": "1",
    "alert_id": str(uuid4()),
    "subscription_id": "1",
    "threshold_id": "1",
    "sensor_id": "TEMPIOT-A011",
    "sensor_ids": "TEMPIOT-A011",
    "loc_id": "A011",
    "loc_ids": "A011",
}


def test_every_route_checks_the_token_before_taking_a_database_connection(
    settings: Settings,
) -> None:
    """With a database that never answers, a route that took a connection before checking
    the token would wait for the pool (30 s) and answer 503: with reads closed, every read
    and every write without a token answers 401 instead."""
    nowhere = settings.model_copy(
        update={
            "db": settings.db.model_copy(update={"url": "postgresql://iotmon@127.0.0.1:1/x"}),
            "api": settings.api.model_copy(update={"pool_min_size": 0, "open_reads": False}),
        }
    )
    app = create_app(nowhere)
    open_paths = {"/health", "/ready", "/metrics"}
    calls = [
        (method.upper(), re.sub(r"{(\w+)}", lambda m: _VALUES.get(m[1], "x"), path))
        for path, operations in app.openapi()["paths"].items()
        if path not in open_paths
        for method in operations
    ]
    assert len([c for c in calls if c[0] != "GET"]) >= 15 and len(calls) >= 40
    with TestClient(app) as client:
        for method, url in calls:
            r = client.request(method, url, json={})
            assert r.status_code == 401, (method, url, r.status_code, r.text)


def test_a_burst_of_readiness_probes_costs_one_probe(settings: Settings) -> None:
    cached = settings.model_copy(
        update={"api": settings.api.model_copy(update={"ready_cache_s": 600.0})}
    )
    app = create_app(cached)
    with TestClient(app) as client:
        answers = [client.get("/ready") for _ in range(25)]
        assert {r.status_code for r in answers} == {200}
        assert answers[0].json() == {"ready": True, "checks": {"database": True, "kafka": True}}
        assert app.state.readiness.probes == 1
    fresh = create_app(
        settings.model_copy(update={"api": settings.api.model_copy(update={"ready_cache_s": 0.0})})
    )
    with TestClient(fresh) as client:
        for _ in range(3):
            assert client.get("/ready").status_code == 200
        assert fresh.state.readiness.probes == 3
