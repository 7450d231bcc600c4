"""The local stack: real Apache Kafka, PostgreSQL and Mosquitto without Docker.

``up`` is idempotent (a running service is left alone), ``down`` stops only what ``up``
started (tracked by pid files / the cluster directory in the state directory).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import psycopg

from iotmon.settings import Settings
from iotmon.stack.kafka import KafkaService
from iotmon.stack.mosquitto import MosquittoService
from iotmon.stack.postgres import PostgresService
from iotmon.stack.process import StackError

__all__ = ["ServiceStatus", "Stack", "StackError", "infra_dir"]

log = logging.getLogger(__name__)


def infra_dir() -> Path:
    """``infra/`` of the source tree this package runs from."""
    return Path(__file__).resolve().parents[2] / "infra"


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    managed: bool
    answering: bool


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        infra = infra_dir()
        self.kafka = KafkaService(settings.stack, infra)
        self.postgres = PostgresService(settings.stack)
        assert settings.mqtt.auth_dir is not None  # set by Settings
        self.mosquitto = MosquittoService(settings.stack, infra, settings.mqtt.auth_dir)

    def up(self) -> dict[str, str]:
        self.settings.stack.state_dir.mkdir(parents=True, exist_ok=True)
        result: dict[str, str] = {}
        if self.settings.stack.manage_postgres:
            result["postgresql"] = self.postgres.up()
        else:
            result["postgresql"] = "external (DATABASE_URL)"
        result["mosquitto"] = self.mosquitto.up()
        result["kafka"] = self.kafka.up()
        return result

    def down(self) -> dict[str, bool]:
        result = {"kafka": self.kafka.down(), "mosquitto": self.mosquitto.down()}
        if self.settings.stack.manage_postgres:
            result["postgresql"] = self.postgres.down()
        return result

    def status(self) -> list[ServiceStatus]:
        s = self.settings
        return [
            ServiceStatus("kafka", self.kafka.address, True, self.kafka.answers()),
            ServiceStatus(
                "postgresql",
                _redact(s.db.url),
                s.stack.manage_postgres,
                _database_answers(s.db.url),
            ),
            ServiceStatus("mosquitto", self.mosquitto.address, True, self.mosquitto.answers()),
        ]


def _database_answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def _redact(url: str) -> str:
    """The URL without its password, for display."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"
