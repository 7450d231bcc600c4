"""Settings of every iotmon process, read once from the environment.

Each entry point builds one :class:`Settings` (``Settings()``) and passes the sections it
needs down to the code it composes; nothing else reads the environment.  Variables use the
prefix ``IOTMON_`` and ``__`` between a section and its field, e.g.
``IOTMON_KAFKA__BOOTSTRAP_SERVERS``.  ``DATABASE_URL`` is honoured as well, for the habit of
most deployment platforms; it also tells ``iotmon stack`` not to start a PostgreSQL of its own.
Every variable is listed in the README's settings table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError


def _default_state_dir() -> Path:
    # root cannot keep a PostgreSQL cluster under /root (700): its services live under /var/lib.
    if os.geteuid() == 0:
        return Path("/var/lib/iotmon")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "iotmon"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "iotmon"


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    # Prepended to every topic name of the registry; lets several deployments (or tests)
    # share one cluster without seeing each other's data.
    topic_prefix: str = ""
    client_id: str = "iotmon"
    default_partitions: int = Field(6, ge=1)
    replication_factor: int = Field(1, ge=1)
    # Authentication: SASL/SCRAM with this process's own principal (docs/security.md lists
    # the principals and their ACLs); SASL_SSL also verifies the brokers against ssl_cafile.
    security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None  # read when a client is made, if no password
    ssl_cafile: Path | None = None

    def _password(self) -> str:
        if self.sasl_password is not None:
            return self.sasl_password.get_secret_value()
        if self.sasl_password_file is not None:
            return self.sasl_password_file.read_text().strip()
        raise ValueError(
            "IOTMON_KAFKA__SASL_PASSWORD (or _PASSWORD_FILE) is needed with "
            f"IOTMON_KAFKA__SECURITY_PROTOCOL={self.security_protocol}"
        )

    def client_config(self) -> dict[str, str | int | float | bool]:
        """The connection part of a confluent-kafka client's configuration."""
        conf: dict[str, str | int | float | bool] = {"bootstrap.servers": self.bootstrap_servers}
        if self.security_protocol != "PLAINTEXT":
            conf |= {
                "security.protocol": self.security_protocol,
                "sasl.mechanism": self.sasl_mechanism,
                "sasl.username": self.sasl_username or "",
                "sasl.password": self._password(),
            }
            if self.ssl_cafile is not None:
                conf["ssl.ca.location"] = str(self.ssl_cafile)
        return conf

    def aiokafka_options(self) -> dict[str, Any]:
        """The same for an aiokafka client (keyword arguments)."""
        if self.security_protocol == "PLAINTEXT":
            return {"bootstrap_servers": self.bootstrap_servers}
        import ssl  # noqa: PLC0415

        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_username,
            "sasl_plain_password": self._password(),
        }
        if self.security_protocol == "SASL_SSL":
            options["ssl_context"] = ssl.create_default_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None
            )
        return options


class DatabaseSettings(BaseModel):
    url: str = "postgresql://iotmon@127.0.0.1:5433/iotmon"
    # All tables live in this schema; migrations and queries set search_path to it.
    db_schema: str = Field("public", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    # auto: use TimescaleDB whenever the server has it; off: plain tables even then.
    timescaledb: Literal["auto", "off"] = "auto"
    # TimescaleDB-only policies (skipped on plain PostgreSQL).
    raw_chunk_interval: str = "1 day"
    raw_compress_after: str = "7 days"
    raw_retention: str = "90 days"
    aggregates_chunk_interval: str = "30 days"
    aggregates_retention: str = ""  # empty: keep aggregates forever
    # Backstop refresh of the daily and monthly rollups (continuous aggregates); the
    # aggregates sink refreshes what it changed in earlier days right after each batch.
    rollup_refresh_every: str = "15 minutes"
    # Least-privilege roles (`iotmon db roles`): <prefix>_migrator owns, <prefix>_sink and
    # <prefix>_api get their table rights from every `iotmon migrate`.
    roles_prefix: str = Field("iotmon", pattern=r"^[a-z_][a-z0-9_]{0,40}$")


BRIDGE_ACCOUNT = "iotmon-bridge"  # the MQTT account the bridge logs in with
NOTIFIER_ACCOUNT = "iotmon-notifier"  # the MQTT account that publishes alert states
ALERTS_ROOT = "alerts"  # the first level of every topic it publishes (its ACL: alerts/#)


class MqttSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 11883
    client_id: str = "iotmon-bridge"
    # Prefix before every topic pattern; lets tests and several plants share a broker.
    topic_prefix: str = ""
    # Patterns of topics that carry readings; {sensor_id} and {gateway} name one level each
    # (subscribed as "+"), a trailing "#" matches the rest.
    # A gateway account may publish only under topics that name it ({gateway}); the
    # second pattern is read for gateways granted it explicitly (`iotmon gateways add
    # --topic`), whose readings then carry no gateway.
    topics: list[str] = Field(
        default_factory=lambda: [
            "gateways/{gateway}/sensors/{sensor_id}/readings",
            "sensors/{sensor_id}/readings",
        ]
    )
    extra_topics: list[str] = Field(default_factory=list)
    # An int, not a Literal: a Literal of ints never matched the text of an environment
    # variable.  The bridge refuses 2 at start-up (it cannot make QoS 2 lossless).
    qos: int = Field(1, ge=0, le=2)
    keepalive: int = 30
    # Mosquitto refuses anonymous clients.  On the local stack a process logs in as the
    # bridge's account (its password in the stack's credentials) unless told otherwise.
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None  # read when connecting, if no password is set
    tls: bool = False  # connect to the TLS listener (port: IOTMON_MQTT__PORT)
    ca_file: Path | None = None  # CA that signed the listener's certificate
    # Where `iotmon gateways` keeps accounts, Mosquitto's password/ACL files and TLS
    # certificates (default: the local stack's, under the state directory).
    auth_dir: Path | None = None

    def login(self) -> tuple[str | None, str | None]:
        """The user name and password to connect with (None, None: anonymous)."""
        if self.password is not None:
            return self.username, self.password.get_secret_value()
        if self.password_file is not None and self.password_file.exists():
            return self.username, self.password_file.read_text().strip()
        return self.username, None


class IngestSettings(BaseModel):
    """Validation limits and batching of the ingest stage (raw topic -> readings topic)."""

    group_id: str = "iotmon-ingest"
    temperature_min: float = -40.0
    temperature_max: float = 125.0
    humidity_min: float = 0.0
    humidity_max: float = 100.0
    max_future_s: float = Field(300.0, ge=0)
    max_age_s: float = Field(7 * 24 * 3600.0, gt=0)
    max_payload_bytes: int = Field(1024 * 1024, gt=0)
    default_timezone: str = "Asia/Seoul"
    # Register a sensor seen for the first time (loc_id = last 4 characters of its id)
    # instead of dead-lettering its readings as unknown.
    auto_register: bool = False
    max_batch_readings: int = Field(500, ge=1)
    max_batch_items: int = Field(1000, ge=1)
    poll_max_messages: int = Field(5000, ge=1)
    poll_timeout_s: float = Field(0.1, gt=0)
    poll_linger_s: float = Field(0.01, ge=0)  # after the first record, wait this long for more
    commit_every_s: float = Field(0.5, ge=0)  # confirm outputs and commit offsets this often
    metrics_port: int = 9101


class WorkerSettings(BaseModel):
    """Stream processing (`iotmon worker`, Faust)."""

    app_id: str = "iotmon-worker"  # also the consumer group and the changelog topic prefix
    web_port: int = 6066  # Faust binds it even with the web server off: distinct per worker
    timezone: str = "Asia/Seoul"  # hours of sensors without a location
    grace_s: float = Field(600.0, ge=0)  # readings up to this late still count in their hour
    tick_interval_s: float = Field(5.0, gt=0)
    idle_close_s: float = Field(30.0, gt=0)  # a quiet partition closes hours by wall clock
    silent_after_s: float = Field(300.0, gt=0)  # sensor-silent alert after this long
    outbox_keep_s: float = Field(600.0, gt=0)
    running_every_s: float = Field(5.0, ge=0)  # running aggregate of a sensor-hour: how often
    batch_max_records: int = Field(200, ge=1)  # input records applied before one write
    batch_wait_s: float = Field(0.01, gt=0)  # longest wait for a batch to fill
    fetch_max_wait_ms: int = Field(100, ge=1)  # the broker holds an empty fetch this long
    session_timeout_s: float = Field(6.0, gt=0)
    heartbeat_s: float = Field(1.0, gt=0)
    metrics_port: int = 9104


class SinkSettings(BaseModel):
    """Kafka -> PostgreSQL sinks (`iotmon sink`)."""

    group_prefix: str = "iotmon-sink"
    poll_max_messages: int = Field(2000, ge=1)
    poll_timeout_s: float = Field(0.2, gt=0)
    # The latest sink, when the realtime answers come from the database alone
    # (api.realtime_from_topic false): after the first record, wait this long.
    poll_linger_s: float = Field(0.02, ge=0)
    history_linger_s: float = Field(0.25, ge=0)  # readings, aggregates, alerts sinks: the same
    commit_every_s: float = Field(0.5, ge=0)  # commit the offsets of written records this often
    max_backoff_s: float = Field(5.0, gt=0)
    metrics_port: int = 9103


class NotifierSettings(BaseModel):
    """Alert delivery (`iotmon notifier`)."""

    group_id: str = "iotmon-notifier"
    max_attempts: int = Field(8, ge=1)  # then FAILED
    backoff_base_s: float = Field(2.0, gt=0)  # before the 2nd attempt; doubles each time
    backoff_max_s: float = Field(300.0, gt=0)
    timeout_s: float = Field(10.0, gt=0)  # one HTTP attempt
    lease_s: float = Field(60.0, gt=0)  # a claimed notification is another's after this
    poll_s: float = Field(1.0, gt=0)  # look for due retries this often
    batch: int = Field(100, ge=1)
    # Database connections for deliveries: each held for one statement, never while a
    # message is on its way.
    db_connections: int = Field(4, ge=1, le=100)
    language: Literal["ko", "en"] = "ko"
    link: str = ""  # appended to every message, e.g. the dashboard's address
    metrics_port: int = 9105
    # E-mail (notify_type "email"): off while smtp_host is empty.
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_starttls: bool = True  # upgrade the connection (certificate checked) before login
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "iotmon@localhost"
    # Rate limit: messages a minute to one subscription's target when the subscription sets
    # none (its max_per_minute); beyond it, owed events go out together as one digest.
    # 0: no limit.
    max_per_minute: int = Field(20, ge=0)
    escalation_check_s: float = Field(5.0, gt=0)  # look for unacknowledged critical alerts
    # MQTT (notify_type "mqtt"): the retained state of each location, published on the
    # broker of IOTMON_MQTT__* as this account, under topics beginning with mqtt_topic_root.
    # On the local stack the account is created with the stack (password in its credentials).
    mqtt_username: str = NOTIFIER_ACCOUNT
    mqtt_password: SecretStr | None = None
    mqtt_password_file: Path | None = None
    mqtt_topic_root: str = Field(ALERTS_ROOT, pattern=r"^[A-Za-z0-9_.-]+$")

    @model_validator(mode="after")
    def _lease_outlasts_an_attempt(self) -> NotifierSettings:
        if self.lease_s <= self.timeout_s:
            raise ValueError(
                "lease_s must be longer than timeout_s (else a slow attempt is sent twice)"
            )
        return self


class BridgeSettings(BaseModel):
    metrics_port: int = 9102


MIN_JWT_SECRET = 32


class ApiSettings(BaseModel):
    """The HTTP API (`iotmon api`)."""

    host: str = "127.0.0.1"
    port: int = 8000
    # Static bearer tokens and their roles (viewer < operator < admin), as JSON:
    # {"<token>": "admin"}.  Every write needs a token; reads too unless open_reads.
    tokens: dict[str, Literal["viewer", "operator", "admin"]] = Field(default_factory=dict)
    open_reads: bool = True
    # JWT bearer tokens (HS256) are accepted when a secret is set; the role is the `role`
    # claim (or the highest of `roles`), the caller's name the `sub` claim.
    jwt_secret: SecretStr | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    stream_max_clients: int = Field(100, ge=1)  # concurrent SSE connections, in all
    stream_max_per_client: int = Field(10, ge=1)  # of one client (token subject or address)
    stream_max_replay: int = Field(10_000, ge=0)  # records a resume goes back, per partition
    ready_cache_s: float = Field(2.0, ge=0)  # /ready answers shared for this long
    stream_ping_s: float = Field(15.0, gt=0)  # SSE keep-alive comment interval
    stale_after_s: float = Field(300.0, gt=0)  # a realtime measurement older than this is stale
    # A realtime answer is reused until PostgreSQL notifies a change of the data it shows,
    # and for at most this many seconds (its ages are that much behind; 0: never reused).
    # Concurrent requests share one rendering either way.
    realtime_cache_s: float = Field(1.0, ge=0)
    # Realtime answers show each sensor's newest status from the latest topic as soon as the
    # API has read it, ahead of the latest sink's write (false: the database's rows only).
    realtime_from_topic: bool = True
    pool_min_size: int = Field(1, ge=0)
    pool_max_size: int = Field(10, ge=1)
    query_work_mem: str = Field("32MB", pattern=r"^\d{1,6}(kB|MB|GB)$")  # per API session
    # Day and month buckets from the daily and monthly rollups (TimescaleDB continuous
    # aggregates) when the schema has them; false: always from the hourly rows (same answers,
    # slower; the baseline of bench/api_load.py).
    rollups: bool = True
    # Request bodies over this are refused (413) before they are read; the master-data
    # upload allows its own limit (5 MiB of CSV).
    max_body_bytes: int = Field(256 * 1024, ge=1024)

    @field_validator("jwt_secret")
    @classmethod
    def _strong_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # HS256 with a short secret is guessable offline from one token; an empty one made
        # every bearer token a 500.  Refused at start-up instead.
        if value is not None and len(value.get_secret_value()) < MIN_JWT_SECRET:
            raise ValueError(
                f"the JWT secret must have at least {MIN_JWT_SECRET} characters (it has "
                f"{len(value.get_secret_value())}); generate one with: python -c "
                "'import secrets; print(secrets.token_urlsafe(48))', or unset it"
            )
        return value


class LogSettings(BaseModel):
    level: str = "INFO"
    json_format: bool = False


class StackSettings(BaseModel):
    """Where and how ``iotmon stack`` runs the local services."""

    state_dir: Path = Field(default_factory=_default_state_dir)
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    kafka_version: str = "4.4.0"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_heap: str = "768m"
    # scram: the broker requires SASL/SCRAM logins and authorises every request by ACL
    # (principal "admin" is the super user; `iotmon kafka-access apply` creates the others).
    kafka_auth: Literal["none", "scram"] = "none"
    postgres_port: int = 5433
    postgres_bin_dir: Path | None = None  # found with pg_config / /usr/lib/postgresql
    # TimescaleDB source release to build when the server has no installed extension; None:
    # the newest shared/vendor/timescaledb-*.tar.gz next to the repository.
    timescaledb_tarball: Path | None = None
    # False when DATABASE_URL names a server that someone else runs.
    manage_postgres: bool = True
    mosquitto_port: int = 11883
    mosquitto_tls_port: int = 11884
    start_timeout_s: float = 90.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="IOTMON_",
        env_nested_delimiter="__",
        env_file=None,
        extra="ignore",
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    db: DatabaseSettings = Field(default_factory=DatabaseSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    bridge: BridgeSettings = Field(default_factory=BridgeSettings)
    notifier: NotifierSettings = Field(default_factory=NotifierSettings)
    sink: SinkSettings = Field(default_factory=SinkSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    stack: StackSettings = Field(default_factory=StackSettings)
    # Where the stages' /metrics listen: loopback unless a deployment opens it.
    metrics_host: str = "127.0.0.1"
    database_url: str | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL", "IOTMON_DATABASE_URL")
    )

    @model_validator(mode="after")
    def _connect_to_stack(self) -> Settings:
        """Addresses not set explicitly follow the local stack's ports."""
        if self.database_url:
            self.db.url = self.database_url
            self.stack.manage_postgres = False
        elif "url" not in self.db.model_fields_set:
            # The stack's superuser, its password from the stack's libpq password file.
            pgpass = self.stack.state_dir / "postgres-auth" / "pgpass"
            self.db.url = (
                f"postgresql://iotmon@127.0.0.1:{self.stack.postgres_port}/iotmon?passfile={pgpass}"
            )
        if "bootstrap_servers" not in self.kafka.model_fields_set:
            self.kafka.bootstrap_servers = f"127.0.0.1:{self.stack.kafka_port}"
        if "port" not in self.mqtt.model_fields_set:
            self.mqtt.port = (
                self.stack.mosquitto_tls_port if self.mqtt.tls else (self.stack.mosquitto_port)
            )
        if self.mqtt.auth_dir is None:
            self.mqtt.auth_dir = self.stack.state_dir / "mosquitto" / "auth"
        if self.mqtt.username is None:
            self.mqtt.username = BRIDGE_ACCOUNT
            if self.mqtt.password is None and self.mqtt.password_file is None:
                self.mqtt.password_file = self.mqtt.auth_dir / "credentials" / BRIDGE_ACCOUNT
        if self.mqtt.tls and self.mqtt.ca_file is None:
            self.mqtt.ca_file = self.mqtt.auth_dir / "tls" / "ca.crt"
        n = self.notifier
        if n.mqtt_password is None and n.mqtt_password_file is None:
            n.mqtt_password_file = self.mqtt.auth_dir / "credentials" / n.mqtt_username
        return self


def notifier_mqtt(settings: Settings) -> MqttSettings:
    """The broker of ``settings.mqtt``, logged in as the notifier's account."""
    n = settings.notifier
    return settings.mqtt.model_copy(
        update={
            "username": n.mqtt_username,
            "password": n.mqtt_password,
            "password_file": n.mqtt_password_file,
        }
    )


class SettingsProblem(ValueError):
    """Settings that cannot work; the message names each setting, never its value."""


def load_settings() -> Settings:
    """The settings of this process, or SettingsProblem saying which setting is wrong and
    why (without its value: it may be a secret)."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = "IOTMON_" + "__".join(str(part).upper() for part in error["loc"])
            lines.append(f"setting {where}: {error['msg']}")
        raise SettingsProblem("\n".join(lines)) from None
    except SettingsError as exc:
        raise SettingsProblem(f"settings: {exc}") from None
