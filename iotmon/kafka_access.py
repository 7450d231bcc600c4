"""Who may do what on Kafka: one principal per component, and the ACLs each one gets.

The plan is computed from the same settings the components run with (topic prefix, consumer
groups, the worker's application id), so the grants name exactly the topics and groups
they use, nothing more:

========== =================================================== ==============================
principal  reads                                               writes
========== =================================================== ==============================
gateway    -                                                   raw readings
bridge     -                                                   bridged readings, dead letters
ingest     raw and bridged readings, sensors                   readings, dead letters, sensors
worker     readings, sensors, thresholds                       clock ticks into readings,
                                                               late readings, hourly
                                                               aggregates, latest, alerts,
                                                               dead letters; its own
                                                               changelog topics
sink       readings, hourly aggregates, latest, alerts         dead letters
api        latest, alerts, sensors, thresholds                 sensors, thresholds, dead
                                                               letters
notifier   alerts (its group ``notifier.group_id``)            dead letters
========== =================================================== ==============================

Only the worker writes alerts; only the API and operators (``admin``) write thresholds.
``admin`` is the broker's super user (topics, imports, replays); the broker config names
it.  ``apply`` creates or re-keys the SCRAM credentials and adds the ACLs (idempotent).
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from iotmon.settings import KafkaSettings, Settings
from schemas.topics import TopicId, topic_name

log = logging.getLogger(__name__)

Principal = Literal["gateway", "bridge", "ingest", "worker", "sink", "api", "notifier"]
PRINCIPALS: tuple[Principal, ...] = (
    "gateway",
    "bridge",
    "ingest",
    "worker",
    "sink",
    "api",
    "notifier",
)

_READ = (AclOperation.READ, AclOperation.DESCRIBE)
_WRITE = (AclOperation.WRITE, AclOperation.DESCRIBE)
_ITERATIONS = 8192
_WORKER_WRITES: tuple[TopicId, ...] = (
    "readings",
    "readings_late",
    "aggregates_hourly",
    "latest",
    "alerts",
    "dead_letters",
)


@dataclass(frozen=True)
class Grant:
    resource: ResourceType
    name: str
    pattern: ResourcePatternType
    operations: tuple[AclOperation, ...]


def _topics(prefix: str, ids: tuple[TopicId, ...], ops: tuple[AclOperation, ...]) -> list[Grant]:
    return [
        Grant(ResourceType.TOPIC, topic_name(t, prefix), ResourcePatternType.LITERAL, ops)
        for t in ids
    ]


def _group(name: str, pattern: ResourcePatternType = ResourcePatternType.LITERAL) -> Grant:
    return Grant(ResourceType.GROUP, name, pattern, _READ)


def access_plan(settings: Settings) -> dict[Principal, list[Grant]]:
    """The grants of every principal for a deployment with these settings."""
    k = settings.kafka
    p = k.topic_prefix
    view_group = _group(f"{k.client_id}-view")  # compacted views: assign(), never commit
    worker_id = f"{p}{settings.worker.app_id}"  # Faust's group and its topics' prefix
    prefixed = ResourcePatternType.PREFIXED
    return {
        "gateway": _topics(p, ("readings_raw",), _WRITE),
        "bridge": _topics(p, ("readings_mqtt", "dead_letters"), _WRITE),
        "ingest": [
            *_topics(p, ("readings_raw", "readings_mqtt", "sensors"), _READ),
            *_topics(p, ("readings", "dead_letters", "sensors"), _WRITE),
            _group(settings.ingest.group_id),
            view_group,
        ],
        "worker": [
            *_topics(p, ("readings", "sensors", "thresholds"), _READ),
            # ... and its clock ticks go into the readings topic, in order with the readings.
            *_topics(p, _WORKER_WRITES, _WRITE),
            # Faust's changelog and assignor topics, created and used by the worker.
            Grant(
                ResourceType.TOPIC,
                f"{worker_id}-",
                prefixed,
                (
                    AclOperation.CREATE,
                    AclOperation.READ,
                    AclOperation.WRITE,
                    AclOperation.DESCRIBE,
                    AclOperation.DESCRIBE_CONFIGS,
                ),
            ),
            _group(worker_id, prefixed),  # the app's group and its repair reader's
            view_group,
        ],
        "sink": [
            *_topics(p, ("readings", "aggregates_hourly", "latest", "alerts"), _READ),
            *_topics(p, ("dead_letters",), _WRITE),
            _group(f"{settings.sink.group_prefix}-", prefixed),
        ],
        "api": [
            *_topics(p, ("latest", "alerts", "sensors", "thresholds"), _READ),
            *_topics(p, ("sensors", "thresholds", "dead_letters"), _WRITE),
            view_group,
        ],
        # Alert events in (committed offsets: its own group), unreadable records out.
        "notifier": [
            *_topics(p, ("alerts",), _READ),
            *_topics(p, ("dead_letters",), _WRITE),
            _group(settings.notifier.group_id),
        ],
    }


def bindings(principal: str, grants: list[Grant]) -> list[AclBinding]:
    """The ACLs of one principal, each once (reading and writing a topic both describe it)."""
    unique = dict.fromkeys(
        (g.resource, g.name, g.pattern, op) for g in grants for op in g.operations
    )
    return [
        AclBinding(resource, name, pattern, f"User:{principal}", "*", op, AclPermissionType.ALLOW)
        for resource, name, pattern, op in unique
    ]


def principal_settings(base: KafkaSettings, principal: str, password_file: Path) -> KafkaSettings:
    """``base`` logged in as ``principal``."""
    return base.model_copy(
        update={
            "security_protocol": "SASL_PLAINTEXT"
            if base.security_protocol == "PLAINTEXT"
            else base.security_protocol,
            "sasl_username": principal,
            "sasl_password": None,
            "sasl_password_file": password_file,
        }
    )


def apply(
    admin: KafkaSettings,
    plan: dict[Principal, list[Grant]],
    passwords: dict[str, str],
    timeout: float = 30.0,
) -> None:
    """Create (or re-key) each principal's SCRAM credential from ``passwords`` and add its
    ACLs, logged in as ``admin`` (a super user)."""
    client = AdminClient(admin.client_config())
    mechanism = ScramMechanism.SCRAM_SHA_512
    if admin.sasl_mechanism == "SCRAM-SHA-256":
        mechanism = ScramMechanism.SCRAM_SHA_256
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(
            name,
            ScramCredentialInfo(mechanism, _ITERATIONS),
            password.encode(),
            secrets.token_bytes(16),
        )
        for name, password in passwords.items()
    ]
    if upserts:
        for future in client.alter_user_scram_credentials(upserts).values():
            future.result(timeout)
    acls = [b for name, grants in plan.items() for b in bindings(name, grants)]
    if acls:
        for future in client.create_acls(acls, request_timeout=timeout).values():
            future.result()
        _wait_until_in_force(client, plan, acls, timeout)
    log.info("Kafka access: %d principals, %d ACLs", len(plan), len(acls))


def _wait_until_in_force(
    client: AdminClient, plan: dict[Principal, list[Grant]], acls: list[AclBinding], timeout: float
) -> None:
    """Return once the broker's authorizer answers with every ACL.  The controller confirms
    a creation before the broker has applied it: a client that ran at once could still be
    refused (TOPIC_AUTHORIZATION_FAILED), seen here one run in a few dozen."""
    wanted = set(acls)
    deadline = time.monotonic() + timeout
    while True:
        seen: set[AclBinding] = set()
        for principal in plan:
            found = client.describe_acls(
                # None matches any name and any host (the stubs say str; the library
                # documents None for a filter).
                AclBindingFilter(
                    ResourceType.ANY,
                    None,  # type: ignore[arg-type]
                    ResourcePatternType.ANY,
                    f"User:{principal}",
                    None,  # type: ignore[arg-type]
                    AclOperation.ANY,
                    AclPermissionType.ANY,
                ),
                request_timeout=timeout,
            ).result()
            seen.update(found)
        if wanted <= seen:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(wanted - seen)} Kafka ACLs not in force after {timeout} s")
        time.sleep(0.1)
