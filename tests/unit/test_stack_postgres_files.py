"""The local PostgreSQL's files: the superuser's password is kept out of the directories the
``postgres`` user controls, moved (never regenerated) from where an older stack kept it, and
files inside the cluster are written with the cluster owner's rights."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from iotmon.settings import StackSettings
from iotmon.stack.postgres import PostgresService

pytestmark = pytest.mark.unit


def test_the_password_of_an_older_stack_is_moved_not_replaced(tmp_path: Path) -> None:
    service = PostgresService(StackSettings(state_dir=tmp_path, postgres_port=15999))
    old = tmp_path / "postgres" / "credentials" / "iotmon"
    old.parent.mkdir(parents=True)
    old.write_text("the-password-the-server-has\n")
    (tmp_path / "postgres" / "pgpass").write_text("stale\n")
    assert service._password() == "the-password-the-server-has"
    assert not old.exists() and not (tmp_path / "postgres" / "pgpass").exists()
    assert "the-password-the-server-has" in service.pgpass.read_text()
    assert service.pgpass.parent == tmp_path / "postgres-auth"
    assert (service.pgpass.stat().st_mode & 0o777) == 0o600
    assert (service.auth.stat().st_mode & 0o777) == 0o700
    # Kept from then on.
    assert service._password() == "the-password-the-server-has"


def test_a_new_stack_generates_one_password_and_keeps_it(tmp_path: Path) -> None:
    service = PostgresService(StackSettings(state_dir=tmp_path, postgres_port=15999))
    first = service._password()
    assert len(first) >= 24 and service._password() == first


@pytest.mark.skipif(os.geteuid() != 0, reason="the cluster has its own owner only under root")
def test_root_never_writes_through_a_link_the_postgres_user_planted() -> None:
    base = Path(tempfile.mkdtemp(prefix="iotmon-link-"))  # reachable by the postgres user
    try:
        base.chmod(0o755)
        service = PostgresService(StackSettings(state_dir=base, postgres_port=15999))
        assert service.user == "postgres"
        victim = base / "root-only"
        victim.write_text("root's\n")
        victim.chmod(0o600)
        data = base / "postgres" / "data"
        data.mkdir(parents=True)
        os.chown(base / "postgres", *_ids())
        os.chown(data, *_ids())
        link = data / "pg_hba.conf"
        link.symlink_to(victim)  # what the postgres user may do in its own directory
        with pytest.raises(subprocess.CalledProcessError):
            service._write_as_owner(link, "host all all 0.0.0.0/0 trust\n")
        assert victim.read_text() == "root's\n"
        assert victim.stat().st_uid == 0
        # A file of its own is written, and belongs to the cluster's owner.
        service._write_as_owner(data / "iotmon-preload.conf", "x = 1\n")
        assert (data / "iotmon-preload.conf").stat().st_uid == _ids()[0]
    finally:
        shutil.rmtree(base)


def _ids() -> tuple[int, int]:
    import pwd  # noqa: PLC0415

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid
