"""Apache Kafka (KRaft, one combined broker+controller) for the local stack.

The broker's jars are resolved by Maven from ``infra/kafka/pom.xml`` into the cache
directory once per version, and run with the machine's Java (17+).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from pathlib import Path
from string import Template

from iotmon.settings import KafkaSettings, StackSettings
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
ADMIN = "admin"  # the super user of a SCRAM broker
CONTROLLER_PRINCIPAL = "controller"  # the broker's own login on its controller listener


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

        config = self.admin_settings(KafkaSettings()).client_config()
        admin = AdminClient({**config, "socket.timeout.ms": 2000})
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

    def credential(self, principal: str) -> Path:
        """Where the local stack keeps a principal's password (mode 0600)."""
        return self.home / "credentials" / principal

    def _password(self, principal: str) -> str:
        path = self.credential(principal)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24) + "\n")
        return path.read_text().strip()

    def _listeners(self) -> str:
        """The listener lines: plaintext, or SASL/SCRAM with ACLs (``kafka_auth=scram``).

        With SCRAM, clients and the broker itself log in over SASL; the controller listener
        uses SASL/PLAIN with a password only the broker knows (SCRAM credentials live in the
        metadata the controller serves, so they cannot guard the controller).  ``admin``
        and the broker's controller principal are the super users; every other principal
        gets what ``iotmon kafka-access apply`` grants, nothing more."""
        port, controller = self.s.kafka_port, self.s.kafka_controller_port
        if self.s.kafka_auth == "none":
            return "\n".join(
                [
                    f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    "inter.broker.listener.name=PLAINTEXT",
                ]
            )
        admin = self._password(ADMIN)
        ctl = self._password(CONTROLLER_PRINCIPAL)
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
        plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
        return "\n".join(
            [
                f"listeners=SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
                f"advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{port}",
                "listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,"
                "CONTROLLER:SASL_PLAINTEXT",
                "inter.broker.listener.name=SASL_PLAINTEXT",
                "sasl.enabled.mechanisms=SCRAM-SHA-512",
                "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
                "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config="
                f'{scram} required username="{ADMIN}" password="{admin}";',
                "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
                "sasl.mechanism.controller.protocol=PLAIN",
                "listener.name.controller.plain.sasl.jaas.config="
                f'{plain} required username="{CONTROLLER_PRINCIPAL}" password="{ctl}" '
                f'user_{CONTROLLER_PRINCIPAL}="{ctl}";',
                "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                f"super.users=User:{ADMIN};User:{CONTROLLER_PRINCIPAL}",
                "allow.everyone.if.no.acl.found=false",
            ]
        )

    def _configure(self) -> Path:
        # The broker's files (records, the metadata log with the SCRAM credentials, the
        # configuration with passwords) are for the stack's user only: 0700 directories,
        # whatever an older stack or the umask left.
        data = self.home / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)
        text = Template((self.infra / "server.properties").read_text()).substitute(
            kafka_port=self.s.kafka_port,
            controller_port=self.s.kafka_controller_port,
            data_dir=data,
            listeners=self._listeners(),
        )
        props = self.home / "server.properties"
        fd = os.open(props, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds passwords
        os.fchmod(fd, 0o600)  # also when an older stack made it 0644
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if not (data / "meta.properties").exists():
            cluster_id = run(self._java("kafka.tools.StorageTool", "random-uuid"), "uuid").strip()
            cluster_id = cluster_id.splitlines()[-1].strip()
            scram = []
            if self.s.kafka_auth == "scram":
                admin = self._password(ADMIN)
                scram = ["--add-scram", f"SCRAM-SHA-512=[name={ADMIN},password={admin}]"]
            run(
                self._java(
                    "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props), *scram
                ),
                "formatting Kafka storage",
            )
        return props

    def admin_settings(self, base: KafkaSettings) -> KafkaSettings:
        """``base`` logged in as the super user of this broker (plaintext: unchanged)."""
        if self.s.kafka_auth == "none":
            return base.model_copy(update={"bootstrap_servers": self.address})
        return base.model_copy(
            update={
                "bootstrap_servers": self.address,
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_username": ADMIN,
                "sasl_password": None,
                "sasl_password_file": self.credential(ADMIN),
            }
        )

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
