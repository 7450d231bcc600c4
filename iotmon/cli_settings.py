"""Settings for a command-line entry point: read once, logging configured, and a setting
that cannot work reported by name (exit status 2) rather than as a traceback."""

from __future__ import annotations

import sys

from iotmon import logs
from iotmon.settings import Settings, SettingsProblem, load_settings


def settings_or_exit() -> Settings:
    try:
        settings = load_settings()
    except SettingsProblem as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
    logs.configure(settings.log)
    return settings
