"""PostgreSQL for the local stack: a private cluster under the state directory.

The server binaries come from the machine's packages (Debian ``postgresql``).  PostgreSQL
refuses to run as root, so when the stack runs as root the cluster belongs to the
``postgres`` system user.  It preloads TimescaleDB whenever the extension is installed
(see :mod:`iotmon.stack.timescaledb`), and restarts to match when that changes.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from iotmon.settings import StackSettings
from iotmon.stack.process import StackError, port_open, run, wait_until
from iotmon.stack.timescaledb import Server

log = logging.getLogger(__name__)

PRELOAD_FILE = "iotmon-preload.conf"
DB_NAME = "iotmon"
DB_USER = "iotmon"


def find_bin_dir(configured: Path | None) -> Path:
    """The directory of ``initdb``/``pg_ctl``: configured, else the newest installed major."""
    if configured is not None:
        return configured
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return Path(pg_ctl).resolve().parent
    raise StackError("PostgreSQL server binaries not found (install the postgresql package)")


class PostgresService:
    def __init__(self, settings: StackSettings) -> None:
        self.s = settings
        self.home = settings.state_dir / "postgres"
        self.data = self.home / "data"
        self.sock = self.home / "run"
        self.log_file = self.home / "postgres.log"
        self.user = "postgres" if os.geteuid() == 0 else None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.s.postgres_port}"

    @property
    def url(self) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.s.postgres_port}/{DB_NAME}"

    def _bin(self, name: str) -> str:
        return str(find_bin_dir(self.s.postgres_bin_dir) / name)

    def answers(self) -> bool:
        if not port_open("127.0.0.1", self.s.postgres_port):
            return False
        result = subprocess.run(
            [self._bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.s.postgres_port)],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def _running(self) -> bool:
        if not (self.data / "postmaster.pid").exists():
            return False
        result = subprocess.run(
            self._as_owner([self._bin("pg_ctl"), "-D", str(self.data), "status"]),
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.user, "--", *argv] if self.user else argv

    def _init(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(parents=True, exist_ok=True)
        if self.user:
            shutil.chown(self.home, self.user, self.user)
            shutil.chown(self.sock, self.user, self.user)
            # The owner must reach its files through the state directory.
            for parent in self.home.parents:
                if parent == Path("/"):
                    break
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    raise StackError(
                        f"{parent} is not searchable by the postgres user; "
                        "set IOTMON_STACK__STATE_DIR to a directory it can reach"
                    )
        if (self.data / "PG_VERSION").exists():
            return
        log.info("initialising a PostgreSQL cluster in %s", self.data)
        run(
            [
                self._bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                DB_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
            "initdb",
            user=self.user,
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# iotmon local stack\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.s.postgres_port}\n"
                f"unix_socket_directories = '{self.sock}'\n"
                "max_connections = 200\n"
                "shared_buffers = 256MB\n"
                "fsync = on\n"
                "timezone = 'UTC'\n"
            )

    def _preload(self) -> str:
        """The libraries the server must preload: TimescaleDB's whenever it is installed."""
        server = Server.of(find_bin_dir(self.s.postgres_bin_dir))
        return "timescaledb" if server.installed_version() else ""

    def _write_preload(self) -> str:
        """Keep the cluster's preload list in :data:`PRELOAD_FILE` (included by
        ``postgresql.conf``, after anything an older stack wrote there); returns it."""
        conf = self.data / "postgresql.conf"
        include = f"include_if_exists = '{PRELOAD_FILE}'"
        if include not in conf.read_text():
            with conf.open("a") as f:
                f.write(f"\n# libraries to preload, kept by `iotmon stack up`\n{include}\n")
        preload = self._preload()
        path = self.data / PRELOAD_FILE
        content = f"shared_preload_libraries = '{preload}'\n"
        if not path.exists() or path.read_text() != content:
            path.write_text(content)
            if self.user:
                shutil.chown(path, self.user, self.user)
        return preload

    def _restart_reason(self, preload: str) -> str | None:
        """Why the running server must restart to match its configuration and binaries."""
        admin_url = f"postgresql://{DB_USER}@127.0.0.1:{self.s.postgres_port}/postgres"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            loaded = str(conn.execute("SHOW shared_preload_libraries").fetchone()[0])  # type: ignore[index]
            running = str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]  # type: ignore[index]
        if loaded != preload:
            return f"preload '{loaded}' -> '{preload}'"
        installed = subprocess.run(
            [self._bin("postgres"), "--version"], capture_output=True, text=True, check=False
        ).stdout.split()
        if len(installed) >= 3 and installed[2] != running:
            return f"server package upgraded from {running} to {installed[2]}"
        return None

    def up(self) -> str:
        if self.answers():
            if not self._running():
                return "already running (not started by the stack)"
            reason = self._restart_reason(self._write_preload())
            if reason is None:
                return "already running"
            log.info("restarting PostgreSQL: %s", reason)
            self._pg_ctl("restart", "-m", "fast")
            wait_until(self.answers, self.s.start_timeout_s, "PostgreSQL", self.log_file)
            return f"restarted ({reason})"
        if port_open("127.0.0.1", self.s.postgres_port) and not self._running():
            raise StackError(
                f"port {self.s.postgres_port} is taken by a process the stack did not start"
            )
        self._init()
        if not self._running():
            self._write_preload()
            self._pg_ctl("start")
        wait_until(self.answers, self.s.start_timeout_s, "PostgreSQL", self.log_file)
        self._ensure_database()
        return "started"

    def _pg_ctl(self, action: str, *options: str) -> None:
        run(
            [
                self._bin("pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                str(int(self.s.start_timeout_s)),
                action,
                *options,
            ],
            f"{action} PostgreSQL",
            user=self.user,
        )

    def _ensure_database(self) -> None:
        admin_url = f"postgresql://{DB_USER}@127.0.0.1:{self.s.postgres_port}/postgres"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
            if found.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))

    def down(self) -> bool:
        if not self._running():
            return False
        log.info("stopping PostgreSQL")
        run(
            [self._bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
            "stopping PostgreSQL",
            user=self.user,
        )
        return True
