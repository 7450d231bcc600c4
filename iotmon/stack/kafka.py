"""Apache Kafka (KRaft, one combined broker+controller) for the local stack.

The broker's jars are resolved by Maven from ``infra/kafka/pom.xml`` into the cache
directory once per version, and run with the machine's Java (17+).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from string import Template

from iotmon.settings import StackSettings
from iotmon.stack.process import (
    StackError,
    port_open,
    read_pid,
    run,
    spawn,
    stop_pid,
    wait_until,
)

log = logging.getLogger(__name__)

NAME = "kafka"


class KafkaService:
    def __init__(self, settings: StackSettings, infra_dir: Path) -> None:
        self.s = settings
        self.infra = infra_dir / "kafka"
        self.home = settings.state_dir / "kafka"
        self.libs = settings.cache_dir / f"kafka-{settings.kafka_version}" / "libs"
        self.pid_file = self.home / "kafka.pid"
        self.log_file = self.home / "kafka.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.s.kafka_port}"

    def answers(self) -> bool:
        return port_open("127.0.0.1", self.s.kafka_port) and self._broker_ready()

    def _broker_ready(self) -> bool:
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415 - only when checked

        admin = AdminClient({"bootstrap.servers": self.address, "socket.timeout.ms": 2000})
        try:
            admin.list_topics(timeout=2)
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False
        return True

    def install(self) -> None:
        """Resolve the broker jars with Maven (once per version)."""
        marker = self.libs / f"kafka_2.13-{self.s.kafka_version}.jar"
        if marker.exists():
            return
        if shutil.which("mvn") is None:
            raise StackError("mvn is not installed; it resolves the Kafka broker jars")
        log.info("resolving Apache Kafka %s with Maven into %s", self.s.kafka_version, self.libs)
        self.libs.mkdir(parents=True, exist_ok=True)
        run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(self.infra / "pom.xml"),
                f"-Dkafka.version={self.s.kafka_version}",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={self.libs}",
                "-DincludeScope=runtime",
            ],
            "resolving Kafka jars",
        )
        if not marker.exists():
            raise StackError(f"Maven did not produce {marker}")

    def _java(self, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise StackError("java (17+) is not installed; the Kafka broker needs it")
        return [
            java,
            f"-Xms{self.s.kafka_heap}",
            f"-Xmx{self.s.kafka_heap}",
            f"-Dlog4j2.configurationFile={self.infra / 'log4j2.yaml'}",
            "-cp",
            f"{self.libs}/*",
            *args,
        ]

    def _configure(self) -> Path:
        data = self.home / "data"
        data.mkdir(parents=True, exist_ok=True)
        text = Template((self.infra / "server.properties").read_text()).substitute(
            kafka_port=self.s.kafka_port,
            controller_port=self.s.kafka_controller_port,
            data_dir=data,
        )
        props = self.home / "server.properties"
        props.write_text(text)
        if not (data / "meta.properties").exists():
            cluster_id = run(self._java("kafka.tools.StorageTool", "random-uuid"), "uuid").strip()
            cluster_id = cluster_id.splitlines()[-1].strip()
            run(
                self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)),
                "formatting Kafka storage",
            )
        return props

    def up(self) -> str:
        if self.answers():
            return "already running"
        if read_pid(self.pid_file) is None and port_open("127.0.0.1", self.s.kafka_port):
            raise StackError(
                f"port {self.s.kafka_port} is taken by a process the stack did not start"
            )
        if read_pid(self.pid_file) is None:
            self.install()
            props = self._configure()
            spawn(self._java("kafka.Kafka", str(props)), self.log_file, self.pid_file)
        wait_until(self.answers, self.s.start_timeout_s, "Kafka", self.log_file)
        return "started"

    def down(self) -> bool:
        return stop_pid(self.pid_file, "Kafka", timeout=60)
