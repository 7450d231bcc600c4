"""Password files: one per principal or role in a directory, created when missing."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path


def new_password() -> str:
    return secrets.token_urlsafe(24)


def load_or_create_passwords(directory: Path, names: Iterable[str]) -> dict[str, str]:
    """The password in ``directory/<name>`` for each name, generating (mode 0600) the ones
    that are missing, so that a deployment's secrets are made here and never typed."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    out = {}
    for name in names:
        path = directory / name
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(new_password() + "\n")
        out[name] = path.read_text().strip()
    return out
