"""`iotmon demo` leaves the API (and the dashboard) up after the simulation until the
stack goes away (`make down`) or Ctrl-C, then stops it: a real child process, and a
Kafka address where nothing listens."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iotmon.demo import Child, keep_serving, live_simulator_args
from iotmon.settings import Settings

pytestmark = pytest.mark.unit


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: nothing listens there


def _child(tmp_path: Path, name: str = "api") -> Child:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    return Child(name, proc, tmp_path / f"{name}.log")


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
    others = [_child(tmp_path, "worker"), _child(tmp_path, "simulate")]
    started = time.monotonic()
    keep_serving(settings, [api], wait=True, others=others)
    assert api.proc.poll() is not None  # stopped
    assert all(c.proc.poll() is not None for c in others)  # the live pipeline too
    assert 4 < time.monotonic() - started < 30  # three missed checks, two seconds apart


def test_after_ctrl_c_in_the_simulation_it_does_not_wait(tmp_path: Path) -> None:
    api = _child(tmp_path)
    started = time.monotonic()
    keep_serving(Settings(), [api], wait=False)
    assert api.proc.poll() is not None
    assert time.monotonic() - started < 10


def test_the_live_simulator_keeps_the_plant_and_drops_the_scenario() -> None:
    args = [
        "--gateway", "demo-gateway", "--duration", "60", "--heat-wave", "--speed", "10",
        "--sensors=12", "--via", "mqtt", "--seed", "7",
    ]  # fmt: skip
    assert live_simulator_args(args) == [
        "--gateway", "demo-gateway", "--sensors", "12", "--via", "mqtt",
        "--no-register", "--no-progress",
    ]  # fmt: skip


SERVE = """
import subprocess, sys
from pathlib import Path
from iotmon.demo import Child, keep_serving, stopped_like_ctrl_c
from iotmon.settings import Settings

def child(name):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(proc.pid, flush=True)
    return Child(name, proc, Path("/dev/null"))

base = Settings()
settings = base.model_copy(update={"kafka": base.kafka.model_copy(
    update={"bootstrap_servers": sys.argv[1]})})
api, worker = child("api"), child("worker")
with stopped_like_ctrl_c():
    print("ready", flush=True)
    keep_serving(settings, [api], wait=True, others=[worker])
print("stopped", flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_demo_stops_what_it_started(signum: signal.Signals) -> None:
    with socket.socket() as kafka:  # something listens: the stack is up
        kafka.bind(("127.0.0.1", 0))
        kafka.listen()
        address = f"127.0.0.1:{kafka.getsockname()[1]}"
        demo = subprocess.Popen(
            [sys.executable, "-c", SERVE, address], stdout=subprocess.PIPE, text=True
        )
        assert demo.stdout is not None
        pids = [int(demo.stdout.readline()), int(demo.stdout.readline())]
        assert demo.stdout.readline() == "ready\n"  # the handlers are in place
        demo.send_signal(signum)
        out, _ = demo.communicate(timeout=60)
    assert "stopped" in out
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
