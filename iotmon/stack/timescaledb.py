"""TimescaleDB for the local stack's PostgreSQL, built from its official source release.

Few package registries carry TimescaleDB (Debian has none), so ``iotmon stack timescaledb``
builds it from a source tarball (``timescaledb-X.Y.Z.tar.gz``, as Timescale publishes it)
when the server has no installed extension, and installs it into the server the stack runs.
The build is cached per TimescaleDB version and PostgreSQL major under the stack's cache
directory, so a second install (a new state directory, a reinstalled server package) takes
seconds.  Building needs ``cmake``, a C compiler and ``postgresql-server-dev-<major>``
(``make system-deps`` installs them); installing needs write access to the server's library
and extension directories (root, or ``sudo``).

On machines without a tarball: install TimescaleDB from your distribution's or Timescale's
packages (https://docs.timescale.com/self-hosted/latest/install/), or download the source
release of the version you want and point ``IOTMON_STACK__TIMESCALEDB_TARBALL`` at it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from iotmon.stack.process import StackError

log = logging.getLogger(__name__)

# Checksums of the source releases this project was tested with; a tarball of another
# version is used with a warning, one of these versions with another checksum is refused.
KNOWN_RELEASES = {
    "2.28.3": "ec2f7de0ba53a473c01e0a57e09053898c6b1f7487228caff0f1d31c8cb2dedb",
}
_TARBALL = re.compile(r"^timescaledb-(\d+\.\d+\.\d+)\.tar\.gz$")
REPO_ROOT = Path(__file__).resolve().parents[2]

INSTRUCTIONS = (
    "install TimescaleDB from your distribution's or Timescale's packages "
    "(https://docs.timescale.com/self-hosted/latest/install/), or set "
    "IOTMON_STACK__TIMESCALEDB_TARBALL to a downloaded source release "
    "(timescaledb-X.Y.Z.tar.gz) and run `iotmon stack timescaledb`"
)


@dataclass(frozen=True)
class Server:
    """Where a PostgreSQL installation keeps its extensions (from its ``pg_config``)."""

    bin_dir: Path
    major: int
    pkglibdir: Path
    sharedir: Path

    @classmethod
    def of(cls, bin_dir: Path) -> Server:
        def config(flag: str) -> str:
            done = subprocess.run(
                [str(bin_dir / "pg_config"), flag], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise StackError(f"{bin_dir / 'pg_config'} {flag} failed: {done.stderr.strip()}")
            return done.stdout.strip()

        version = config("--version")  # "PostgreSQL 15.20 (Debian ...)"
        match = re.search(r"PostgreSQL (\d+)", version)
        if match is None:
            raise StackError(f"cannot read the PostgreSQL major version from {version!r}")
        return cls(bin_dir, int(match[1]), Path(config("--pkglibdir")), Path(config("--sharedir")))

    @property
    def pg_config(self) -> Path:
        return self.bin_dir / "pg_config"

    def installed_version(self) -> str | None:
        """The TimescaleDB version the server can load (control file and library), if any."""
        control = self.sharedir / "extension" / "timescaledb.control"
        if not control.exists():
            return None
        match = re.search(r"default_version\s*=\s*'([^']+)'", control.read_text())
        if match is None:
            return None
        version = match[1]
        if not (self.pkglibdir / f"timescaledb-{version}.so").exists():
            return None
        return version

    def can_build(self) -> str | None:
        """What is missing to build an extension for this server (None: nothing)."""
        missing = [tool for tool in ("cmake", "make", "cc") if shutil.which(tool) is None]
        try:
            includes = subprocess.run(
                [str(self.pg_config), "--includedir-server"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
        except OSError:  # no pg_config at all
            includes = ""
        if not includes or not (Path(includes) / "postgres.h").exists():
            missing.append(f"postgresql-server-dev-{self.major}")
        return ", ".join(missing) or None


def tarball_version(path: Path) -> str:
    match = _TARBALL.match(path.name)
    if match is None:
        raise StackError(f"{path}: not a TimescaleDB source release (timescaledb-X.Y.Z.tar.gz)")
    return match[1]


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version))


def _origin_checkout() -> Path | None:
    """The repository this one was cloned from, when that is a directory on this machine."""
    done = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "remote", "get-url", "origin"],
        capture_output=True,
        text=True,
        check=False,
    )
    url = done.stdout.strip().removeprefix("file://")
    if done.returncode == 0 and url.startswith("/") and Path(url).is_dir():
        return Path(url).resolve()
    return None


def find_tarball(configured: Path | None) -> Path | None:
    """The configured tarball, else the newest ``shared/vendor/timescaledb-*.tar.gz`` next
    to this repository (or next to the repository it was cloned from)."""
    if configured is not None:
        if not configured.is_file():
            raise StackError(f"IOTMON_STACK__TIMESCALEDB_TARBALL: {configured} does not exist")
        return configured
    roots = [REPO_ROOT, _origin_checkout()]
    found = [
        p
        for root in roots
        if root is not None
        for p in (root.parent / "shared" / "vendor").glob("timescaledb-*.tar.gz")
        if _TARBALL.match(p.name)
    ]
    if not found:
        return None
    return max(found, key=lambda p: _numbers(tarball_version(p)))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(path: Path, version: str) -> None:
    known = KNOWN_RELEASES.get(version)
    actual = _sha256(path)
    if known is None:
        log.warning("TimescaleDB %s has no known checksum here (sha256 %s)", version, actual)
    elif actual != known:
        raise StackError(f"{path}: sha256 {actual} is not that of TimescaleDB {version}")


def _run(argv: list[str], cwd: Path, what: str, log_file: Path) -> None:
    with log_file.open("ab") as out:
        done = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-30:]
        raise StackError(f"{what} failed (full log: {log_file}):\n" + "\n".join(tail))


def build(tarball: Path, server: Server, cache_dir: Path) -> Path:
    """The files of TimescaleDB built for ``server`` (a tree rooted at ``/``), from the cache
    when this version was built for this PostgreSQL major before."""
    version = tarball_version(tarball)
    stage = cache_dir / "timescaledb" / f"{version}-pg{server.major}"
    done_marker = stage / ".built"
    if done_marker.exists():
        log.info("TimescaleDB %s for PostgreSQL %d: cached in %s", version, server.major, stage)
        return stage
    _check(tarball, version)
    missing = server.can_build()
    if missing:
        raise StackError(f"cannot build TimescaleDB: missing {missing} (run `make system-deps`)")
    shutil.rmtree(stage, ignore_errors=True)
    stage.parent.mkdir(parents=True, exist_ok=True)
    log_file = stage.parent / f"build-{version}-pg{server.major}.log"
    log_file.unlink(missing_ok=True)
    log.info("building TimescaleDB %s for PostgreSQL %d (a few minutes)", version, server.major)
    with tempfile.TemporaryDirectory(prefix="timescaledb-") as tmp:
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="data")
        (source,) = Path(tmp).iterdir()
        _run(
            [
                "./bootstrap",
                f"-DPG_CONFIG={server.pg_config}",
                "-DCMAKE_BUILD_TYPE=Release",
                "-DREGRESS_CHECKS=OFF",
                "-DTAP_CHECKS=OFF",
                "-DWARNINGS_AS_ERRORS=OFF",
                "-DLINTER=OFF",
                "-DENABLE_OPTIMIZER_DEBUG=OFF",
            ],
            source,
            "TimescaleDB bootstrap",
            log_file,
        )
        jobs = str(os.cpu_count() or 1)
        _run(["make", "-C", "build", "-j", jobs], source, "TimescaleDB build", log_file)
        _run(
            ["make", "-C", "build", "install", f"DESTDIR={stage}"],
            source,
            "TimescaleDB staging",
            log_file,
        )
    done_marker.write_text(f"{version} for PostgreSQL {server.major}\n")
    return stage


def install(stage: Path, server: Server) -> None:
    """Copy a staged build into the server's library and extension directories."""
    copied = 0
    for target_dir in (server.pkglibdir, server.sharedir / "extension"):
        staged = stage / target_dir.relative_to("/")
        if not staged.is_dir():
            raise StackError(f"{stage}: no {target_dir} in the staged build")
        for path in staged.iterdir():
            if path.is_file():
                target = target_dir / path.name
                try:
                    shutil.copy2(path, target)
                except PermissionError as exc:
                    raise StackError(
                        f"cannot write {target}: run this as root (sudo), or {INSTRUCTIONS}"
                    ) from exc
                copied += 1
    log.info("installed %d TimescaleDB files into PostgreSQL %d", copied, server.major)


def ensure(server: Server, tarball: Path | None, cache_dir: Path, *, require: bool) -> str:
    """TimescaleDB installed into ``server`` if it is not yet and a source release is at hand.
    Returns what was done; ``require``: raise instead of going on without it."""
    installed = server.installed_version()
    if installed is not None and (
        tarball is None or _numbers(tarball_version(tarball)) <= _numbers(installed)
    ):
        return f"TimescaleDB {installed} installed (PostgreSQL {server.major})"
    if tarball is None:
        message = f"TimescaleDB is not installed and no source release was found: {INSTRUCTIONS}"
        if require:
            raise StackError(message)
        return message + "; the stack runs on plain PostgreSQL"
    try:
        stage = build(tarball, server, cache_dir)
        install(stage, server)
        version = server.installed_version()
        if version is None:
            raise StackError(
                f"TimescaleDB was installed from {stage} but the server cannot load it"
            )
    except StackError as exc:
        if require:
            raise
        return f"TimescaleDB could not be installed ({exc}); the stack runs on plain PostgreSQL"
    return f"TimescaleDB {version} built from {tarball.name}, installed (PostgreSQL {server.major})"
