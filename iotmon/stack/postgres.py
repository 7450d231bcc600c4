"""PostgreSQL for the local stack: a private cluster under the state directory.

The server binaries come from the machine's packages (Debian ``postgresql``).  PostgreSQL
refuses to run as root, so when the stack runs as root the cluster belongs to the
``postgres`` system user.  It preloads TimescaleDB whenever the extension is installed
(see :mod:`iotmon.stack.timescaledb`), and restarts to match when that changes.

No connection is trusted: every one, over TCP or the socket, logs in with a SCRAM password.
The superuser's is generated once and kept in ``credentials/iotmon`` and a libpq password
file (``pgpass``, mode 0600) that the stack's default database URL names, both under
``postgres-auth/``: a directory of the invoking user, never of the ``postgres`` user (who
could otherwise point them elsewhere with a symbolic link).  Files inside the cluster are
written as the cluster's owner, for the same reason.  A cluster made
by an older stack (which trusted everyone) gets its password and ``pg_hba.conf`` on the
next ``iotmon stack up``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
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
HBA = """# Kept by `iotmon stack up`: every connection logs in with a SCRAM password.
local   all  all                scram-sha-256
host    all  all  127.0.0.1/32  scram-sha-256
host    all  all  ::1/128       scram-sha-256
"""
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
        return self.url_of(DB_NAME)

    def url_of(self, database: str) -> str:
        return (
            f"postgresql://{DB_USER}@127.0.0.1:{self.s.postgres_port}/{database}"
            f"?passfile={self.pgpass}"
        )

    @property
    def auth(self) -> Path:
        return self.s.state_dir / "postgres-auth"

    @property
    def pgpass(self) -> Path:
        return self.auth / "pgpass"

    def _password(self) -> str:
        """The superuser's password (generated once, mode 0600), and the password file
        that libpq reads it from."""
        path = self.auth / "credentials" / DB_USER
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.auth.chmod(0o700)
            self._move_old_password(path)
        if not path.exists():
            _write_private(path, secrets.token_urlsafe(24) + "\n")
        password = path.read_text().strip()
        # Any port of this machine: the same server is also reached through a port of its
        # own now and then (a proxy in front of it).  SCRAM never sends the password itself.
        lines = "".join(
            f"{host}:*:*:{DB_USER}:{password}\n"
            for host in ("127.0.0.1", "localhost", str(self.sock))
        )
        if not self.pgpass.exists() or self.pgpass.read_text() != lines:
            _write_private(self.pgpass, lines)
        return password

    def _move_old_password(self, path: Path) -> None:
        """A stack of the previous release kept the password inside the cluster's home:
        move it here (the server has it already)."""
        old = self.home / "credentials" / DB_USER
        if old.is_file() and not old.is_symlink():
            _write_private(path, old.read_text())
        for stale in (old, self.home / "pgpass"):
            stale.unlink(missing_ok=True)  # never follows a link
        with contextlib.suppress(OSError):
            (self.home / "credentials").rmdir()

    def _secure(self) -> bool:
        """Give a cluster that trusted its clients the superuser's password and SCRAM in
        ``pg_hba.conf``; True when the configuration must be reloaded."""
        hba = self.data / "pg_hba.conf"
        if hba.read_text() == HBA:
            return False
        password = self._password()
        with psycopg.connect(self.url_of("postgres"), autocommit=True) as conn:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(DB_USER), sql.Literal(password)
                )
            )
        self._write_as_owner(hba, HBA)
        log.info("PostgreSQL: trust replaced by SCRAM passwords (pg_hba.conf)")
        return True

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

    def _write_as_owner(self, path: Path, text: str) -> None:
        """Write a file of the cluster with the rights of its owner (root never writes, nor
        follows links, in a directory the postgres user controls)."""
        if not self.user:
            path.write_text(text)
            return
        subprocess.run(
            self._as_owner(["sh", "-c", 'umask 077 && cat > "$1"', "sh", str(path)]),
            input=text.encode(),
            check=True,
            capture_output=True,
        )

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.user, "--", *argv] if self.user else argv

    def _init(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(parents=True, exist_ok=True)
        if self.user:
            for path in (self.home, self.sock):
                # Not through a symbolic link the postgres user may have put there.
                os.chown(path, *_ids(self.user), follow_symlinks=False)
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
        # initdb reads the superuser's password from a file it can read (as its user).
        pwfile = self.home / ".initdb-password"
        self._write_as_owner(pwfile, self._password() + "\n")
        try:
            run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    DB_USER,
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ],
                "initdb",
                user=self.user,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        self._write_as_owner(self.data / "pg_hba.conf", HBA)
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
            self._write_as_owner(path, content)
        return preload

    def _restart_reason(self, preload: str) -> str | None:
        """Why the running server must restart to match its configuration and binaries."""
        with psycopg.connect(self.url_of("postgres"), autocommit=True) as conn:
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
            self._password()
            if self._secure():
                self._pg_ctl("reload")
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
        self._password()
        if not self._running():
            self._write_preload()
            self._pg_ctl("start")
        wait_until(self.answers, self.s.start_timeout_s, "PostgreSQL", self.log_file)
        if self._secure():
            self._pg_ctl("reload")
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
        with psycopg.connect(self.url_of("postgres"), autocommit=True) as conn:
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


def _ids(user: str) -> tuple[int, int]:
    import pwd  # noqa: PLC0415

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
