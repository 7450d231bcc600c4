"""Stopping a service process started by this same process (as the tests' second broker
is): the exited child is reaped, not waited out until the SIGKILL timeout."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from iotmon.stack.process import read_pid, spawn, stop_pid

pytestmark = pytest.mark.unit


def test_a_child_that_exits_on_sigterm_is_reaped_not_killed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pid_file = tmp_path / "svc.pid"
    spawn([sys.executable, "-c", "import time; time.sleep(300)"], tmp_path / "svc.log", pid_file)
    assert read_pid(pid_file) is not None
    with caplog.at_level(logging.WARNING):
        assert stop_pid(pid_file, "a sleeper", timeout=120)
    assert "did not stop" not in caplog.text  # SIGTERM was enough; no SIGKILL
    assert not pid_file.exists()
