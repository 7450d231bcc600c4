"""Background processes of the local stack, tracked by pid files in the state directory."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


class StackError(RuntimeError):
    """A service of the local stack could not be installed, started or stopped."""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def read_pid(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` if that process is alive, else None."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def spawn(
    argv: Sequence[str], log_file: Path, pid_file: Path, env: dict[str, str] | None = None
) -> int:
    """Start ``argv`` detached from this process (own session), output to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    pid_file.write_text(str(proc.pid))
    return proc.pid


def wait_until(check: Callable[[], bool], timeout: float, what: str, log_file: Path) -> None:
    """Poll ``check`` until it is true; raise StackError with the log's tail on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    tail = ""
    if log_file.exists():
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-20:])
    raise StackError(f"{what} did not come up within {timeout:.0f}s; last log lines:\n{tail}")


def _reaped(pid: int) -> bool:
    """Whether ``pid`` is a child of this process that has exited (and is now reaped).  A
    child that exited stays a zombie until its parent waits for it, and a zombie still
    answers ``kill(pid, 0)``: without this, stopping a service this same process started
    waited out the whole timeout."""
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: init reaps it
        return False
    return done == pid


def stop_pid(pid_file: Path, what: str, timeout: float = 30.0) -> bool:
    """SIGTERM the process of ``pid_file`` (SIGKILL after ``timeout``); False if none ran."""
    pid = read_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    log.info("stopping %s (pid %d)", what, pid)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _reaped(pid) or read_pid(pid_file) is None:
            break
        time.sleep(0.2)
    else:
        log.warning("%s did not stop within %.0fs; killing it", what, timeout)
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True


def run(argv: Sequence[str], what: str, user: str | None = None) -> str:
    """Run a short command to completion; StackError with its output if it fails."""
    cmd = list(argv)
    if user is not None:
        cmd = ["runuser", "-u", user, "--", *cmd]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StackError(f"{what} failed ({result.returncode}): {result.stderr or result.stdout}")
    return result.stdout
