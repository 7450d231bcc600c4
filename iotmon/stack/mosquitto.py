"""Mosquitto (the machine's package) for the local stack, on its own port."""

from __future__ import annotations

import getpass
import logging
import os
import shutil
from pathlib import Path
from string import Template

from iotmon.settings import StackSettings
from iotmon.stack.process import StackError, port_open, read_pid, spawn, stop_pid, wait_until

log = logging.getLogger(__name__)


class MosquittoService:
    def __init__(self, settings: StackSettings, infra_dir: Path) -> None:
        self.s = settings
        self.template = infra_dir / "mosquitto" / "mosquitto.conf"
        self.home = settings.state_dir / "mosquitto"
        self.pid_file = self.home / "mosquitto.pid"
        self.log_file = self.home / "mosquitto.log"
        self.stdout_file = self.home / "mosquitto.out"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.s.mosquitto_port}"

    def answers(self) -> bool:
        return port_open("127.0.0.1", self.s.mosquitto_port)

    def _binary(self) -> str:
        for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
            if candidate and Path(candidate).exists():
                return candidate
        raise StackError("mosquitto is not installed (Debian package mosquitto)")

    def up(self) -> str:
        if read_pid(self.pid_file) is not None and self.answers():
            return "already running"
        if self.answers():
            raise StackError(
                f"port {self.s.mosquitto_port} is taken by a process the stack did not start"
            )
        data = self.home / "data"
        data.mkdir(parents=True, exist_ok=True)
        conf = self.home / "mosquitto.conf"
        # Run as the invoking user (mosquitto would otherwise switch to its own user, which
        # cannot write the state directory).
        user_line = f"user {getpass.getuser()}" if os.geteuid() == 0 else ""
        conf.write_text(
            Template(self.template.read_text()).substitute(
                port=self.s.mosquitto_port,
                data_dir=data,
                log_file=self.log_file,
                pid_file=self.home / "mosquitto.run.pid",
                user_line=user_line,
            )
        )
        spawn([self._binary(), "-c", str(conf)], self.stdout_file, self.pid_file)
        wait_until(self.answers, self.s.start_timeout_s, "Mosquitto", self.stdout_file)
        return "started"

    def down(self) -> bool:
        return stop_pid(self.pid_file, "Mosquitto")
