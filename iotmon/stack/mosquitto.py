"""Mosquitto (the machine's package) for the local stack, on its own ports.

Anonymous clients are refused: the stack creates the bridge's account (its password under
``<auth_dir>/credentials``) and a CA with the TLS listener's certificate; gateways get
accounts from ``iotmon gateways add``.
"""

from __future__ import annotations

import getpass
import logging
import os
import shutil
from pathlib import Path
from string import Template

from iotmon.mqtt_auth import AuthDir, ensure_tls, reload_mosquitto
from iotmon.settings import ALERTS_ROOT, BRIDGE_ACCOUNT, NOTIFIER_ACCOUNT, StackSettings
from iotmon.stack.process import StackError, port_open, read_pid, spawn, stop_pid, wait_until

log = logging.getLogger(__name__)


class MosquittoService:
    def __init__(self, settings: StackSettings, infra_dir: Path, auth_dir: Path) -> None:
        self.s = settings
        self.auth_dir = auth_dir
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

    @property
    def tls_address(self) -> str:
        return f"127.0.0.1:{self.s.mosquitto_tls_port}"

    def _config(self) -> str:
        data = self.home / "data"
        data.mkdir(parents=True, exist_ok=True)
        # Run as the invoking user (mosquitto would otherwise switch to its own user, which
        # cannot write the state directory).
        user_line = f"user {getpass.getuser()}" if os.geteuid() == 0 else ""
        return Template(self.template.read_text()).substitute(
            port=self.s.mosquitto_port,
            tls_port=self.s.mosquitto_tls_port,
            bind="127.0.0.1",
            auth_dir=self.auth_dir,
            data_dir=data,
            log_file=self.log_file,
            pid_file=self.home / "mosquitto.run.pid",
            user_line=user_line,
        )

    def prepare_auth(self) -> None:
        """The bridge's and the notifier's accounts, the password and ACL files, the CA and
        certificate."""
        auth = AuthDir(self.auth_dir)
        auth.add_service(BRIDGE_ACCOUNT, write=[], read=["#"])
        auth.add_service(NOTIFIER_ACCOUNT, write=[f"{ALERTS_ROOT}/#"], read=[])
        auth.ensure_files()
        ensure_tls(self.auth_dir / "tls", ["localhost", "127.0.0.1"])

    def up(self) -> str:
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)  # queued messages and the broker's log are the stack's alone
        self.prepare_auth()
        conf = self.home / "mosquitto.conf"
        text = self._config()
        running = read_pid(self.pid_file) is not None and self.answers()
        if running and conf.exists() and conf.read_text() == text:
            return "already running"
        if running:
            # Started with another configuration (e.g. before anonymous access was closed).
            log.info("Mosquitto's configuration changed: restarting it")
            self.down()
        elif self.answers():
            raise StackError(
                f"port {self.s.mosquitto_port} is taken by a process the stack did not start"
            )
        conf.write_text(text)
        spawn([self._binary(), "-c", str(conf)], self.stdout_file, self.pid_file)
        wait_until(self._both_answer, self.s.start_timeout_s, "Mosquitto", self.stdout_file)
        return "restarted (new configuration)" if running else "started"

    def _both_answer(self) -> bool:
        return self.answers() and port_open("127.0.0.1", self.s.mosquitto_tls_port)

    def reload(self) -> bool:
        """Make the running Mosquitto read the password and ACL files again; False when
        the stack's Mosquitto is not running."""
        pid = read_pid(self.pid_file)
        if pid is None:
            return False
        reload_mosquitto(pid)
        return True

    def down(self) -> bool:
        return stop_pid(self.pid_file, "Mosquitto")
