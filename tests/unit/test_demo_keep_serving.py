"""`iotmon demo` leaves the API (and the dashboard) up after the simulation until the
stack goes away (`make down`) or Ctrl-C, then stops it: a real child process, and a
Kafka address where nothing listens."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iotmon.demo import Child, keep_serving
from iotmon.settings import Settings

pytestmark = pytest.mark.unit


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: nothing listens there


def _child(tmp_path: Path) -> Child:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    return Child("api", proc, tmp_path / "api.log")


def test_the_api_stops_once_the_stack_is_gone(tmp_path: Path) -> None:
    base = Settings()
    settings = base.model_copy(
        update={
            "kafka": base.kafka.model_copy(
                update={"bootstrap_servers": f"127.0.0.1:{_closed_port()}"}
            )
        }
    )
    api = _child(tmp_path)
    started = time.monotonic()
    keep_serving(settings, [api], wait=True)
    assert api.proc.poll() is not None  # stopped
    assert 4 < time.monotonic() - started < 30  # three missed checks, two seconds apart


def test_after_ctrl_c_in_the_simulation_it_does_not_wait(tmp_path: Path) -> None:
    api = _child(tmp_path)
    started = time.monotonic()
    keep_serving(Settings(), [api], wait=False)
    assert api.proc.poll() is not None
    assert time.monotonic() - started < 10
