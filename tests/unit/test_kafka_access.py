"""The Kafka access plan (iotmon/kafka_access.py) without a broker: every principal's grants
name exactly the topics and groups its component uses, with the deployment's prefix and
group names.  tests/integration/test_kafka_auth.py proves the same grants on a SASL broker."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AclOperation, ResourcePatternType, ResourceType

from iotmon.kafka_access import PRINCIPALS, Grant, access_plan, bindings
from iotmon.settings import Settings
from schemas.topics import topic_name

pytestmark = pytest.mark.unit

READ = {AclOperation.READ, AclOperation.DESCRIBE}
WRITE = {AclOperation.WRITE, AclOperation.DESCRIBE}


def _settings(prefix: str = "", notifier_group: str = "iotmon-notifier") -> Settings:
    base = Settings()
    return base.model_copy(
        update={
            "kafka": base.kafka.model_copy(update={"topic_prefix": prefix}),
            "notifier": base.notifier.model_copy(update={"group_id": notifier_group}),
        }
    )


def _topics(grants: list[Grant], ops: set[AclOperation]) -> set[str]:
    return {
        g.name
        for g in grants
        if g.resource == ResourceType.TOPIC and ops & set(g.operations) - {AclOperation.DESCRIBE}
    }


def test_every_principal_has_a_plan_and_nothing_else_does() -> None:
    assert set(access_plan(_settings())) == set(PRINCIPALS)
    assert "notifier" in PRINCIPALS


def test_the_notifier_reads_alerts_in_its_group_and_writes_dead_letters_only() -> None:
    prefix = "plant1."
    grants = access_plan(_settings(prefix, "notify-plant1"))["notifier"]
    assert _topics(grants, {AclOperation.READ}) == {topic_name("alerts", prefix)}
    assert _topics(grants, {AclOperation.WRITE}) == {topic_name("dead_letters", prefix)}
    groups = [g for g in grants if g.resource == ResourceType.GROUP]
    assert [(g.name, g.pattern, set(g.operations)) for g in groups] == [
        ("notify-plant1", ResourcePatternType.LITERAL, READ)
    ]
    for g in grants:
        assert g.pattern == ResourcePatternType.LITERAL, g  # no prefix grants
        assert AclOperation.CREATE not in g.operations, g
        if g.resource == ResourceType.TOPIC:
            assert set(g.operations) in (READ, WRITE), g


def test_only_the_worker_writes_alerts_and_only_the_api_writes_thresholds() -> None:
    plan = access_plan(_settings())
    alerts, thresholds = topic_name("alerts", ""), topic_name("thresholds", "")
    writers = {p for p, grants in plan.items() if alerts in _topics(grants, {AclOperation.WRITE})}
    assert writers == {"worker"}
    editors = {
        p for p, grants in plan.items() if thresholds in _topics(grants, {AclOperation.WRITE})
    }
    assert editors == {"api"}
    readers = {p for p, grants in plan.items() if alerts in _topics(grants, {AclOperation.READ})}
    assert readers == {"sink", "api", "notifier"}


def test_bindings_list_each_operation_once_for_the_principal() -> None:
    grants = access_plan(_settings())["notifier"]
    acls = bindings("notifier", grants)
    keys = [(b.restype, b.name, b.operation) for b in acls]
    assert len(keys) == len(set(keys))
    assert {b.principal for b in acls} == {"User:notifier"}
    # alerts: read + describe; dead letters: write + describe; the group: read + describe.
    assert len(acls) == 6
