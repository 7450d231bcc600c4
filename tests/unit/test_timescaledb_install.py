"""How `iotmon stack timescaledb` decides what to build and install (real files, no server)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from iotmon.stack.process import StackError
from iotmon.stack.timescaledb import (
    KNOWN_RELEASES,
    Server,
    _check,
    ensure,
    find_tarball,
    install,
    tarball_version,
)

pytestmark = pytest.mark.unit


def server(tmp_path: Path, version: str | None) -> Server:
    lib, share = tmp_path / "lib", tmp_path / "share"
    (share / "extension").mkdir(parents=True)
    lib.mkdir()
    if version:
        (share / "extension" / "timescaledb.control").write_text(
            f"comment = 'x'\ndefault_version = '{version}'\nmodule_pathname = '$libdir/x'\n"
        )
        (lib / f"timescaledb-{version}.so").write_bytes(b"\x7fELF")
    return Server(tmp_path / "bin", 15, lib, share)


def test_the_installed_version_needs_its_control_file_and_library(tmp_path: Path) -> None:
    assert server(tmp_path / "a", "2.28.3").installed_version() == "2.28.3"
    assert server(tmp_path / "b", None).installed_version() is None
    half = server(tmp_path / "c", "2.28.3")
    (half.pkglibdir / "timescaledb-2.28.3.so").unlink()
    assert half.installed_version() is None


def test_tarball_names_and_checksums(tmp_path: Path) -> None:
    assert tarball_version(Path("timescaledb-2.28.3.tar.gz")) == "2.28.3"
    with pytest.raises(StackError):
        tarball_version(Path("timescaledb-latest.tar.gz"))
    forged = tmp_path / "timescaledb-2.28.3.tar.gz"
    forged.write_bytes(b"not the release")
    assert hashlib.sha256(forged.read_bytes()).hexdigest() != KNOWN_RELEASES["2.28.3"]
    with pytest.raises(StackError, match="sha256"):
        _check(forged, "2.28.3")
    _check(forged, "9.9.9")  # unknown version: a warning, not a refusal
    assert find_tarball(forged) == forged
    with pytest.raises(StackError, match="does not exist"):
        find_tarball(tmp_path / "missing.tar.gz")


def test_nothing_is_built_when_the_server_has_this_version_or_a_newer_one(
    tmp_path: Path,
) -> None:
    release = tmp_path / "timescaledb-2.28.3.tar.gz"
    release.write_bytes(b"unused: nothing is built")
    for installed in ("2.28.3", "2.29.0"):
        s = server(tmp_path / installed, installed)
        assert ensure(s, release, tmp_path / "cache", require=True).startswith(
            f"TimescaleDB {installed} installed"
        )
    assert not (tmp_path / "cache").exists()


def test_without_a_release_it_says_what_to_do_or_fails_when_required(tmp_path: Path) -> None:
    bare = server(tmp_path, None)
    assert "plain PostgreSQL" in ensure(bare, None, tmp_path / "cache", require=False)
    with pytest.raises(StackError, match=r"docs\.timescale\.com"):
        ensure(bare, None, tmp_path / "cache", require=True)


def test_a_staged_build_is_copied_into_the_server(tmp_path: Path) -> None:
    target = server(tmp_path / "server", None)
    stage = tmp_path / "stage"
    lib = stage / target.pkglibdir.relative_to("/")
    ext = stage / (target.sharedir / "extension").relative_to("/")
    lib.mkdir(parents=True)
    ext.mkdir(parents=True)
    (lib / "timescaledb-2.28.3.so").write_bytes(b"\x7fELF")
    (ext / "timescaledb.control").write_text("default_version = '2.28.3'\n")
    install(stage, target)
    assert target.installed_version() == "2.28.3"


def test_a_release_that_cannot_be_built_stops_only_when_required(tmp_path: Path) -> None:
    """A forged (or unbuildable) release: optional goes on with plain PostgreSQL and says
    why; required fails."""
    bare = server(tmp_path, None)
    forged = tmp_path / "timescaledb-2.28.3.tar.gz"
    forged.write_bytes(b"not the release")
    said = ensure(bare, forged, tmp_path / "cache", require=False)
    assert "could not be installed" in said and "sha256" in said and "plain PostgreSQL" in said
    with pytest.raises(StackError, match="sha256"):
        ensure(bare, forged, tmp_path / "cache", require=True)
