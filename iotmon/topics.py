"""Creating the registry's topics on a Kafka cluster."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from iotmon.settings import KafkaSettings
from schemas.topics import TOPICS, TopicId, topic_config, topic_name

log = logging.getLogger(__name__)


def admin_client(settings: KafkaSettings) -> AdminClient:
    return AdminClient(settings.client_config())


def ensure_topics(
    settings: KafkaSettings, ids: Iterable[TopicId] | None = None, timeout: float = 30.0
) -> list[str]:
    """Create the registry's topics that do not exist yet; returns the names created.

    Existing topics are left as they are (a partition count that differs from the registry
    is logged, because it breaks co-partitioning of sensor-keyed topics).
    """
    admin = admin_client(settings)
    existing = admin.list_topics(timeout=timeout).topics
    wanted = [TOPICS[i] for i in (ids or TOPICS)]
    new: list[NewTopic] = []
    for spec in wanted:
        name = topic_name(spec.id, settings.topic_prefix)
        partitions = spec.partitions or settings.default_partitions
        if name in existing:
            have = len(existing[name].partitions)
            if have != partitions:
                log.warning(
                    "topic %s has %d partitions, the registry says %d", name, have, partitions
                )
            continue
        new.append(
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=settings.replication_factor,
                config=topic_config(spec),
            )
        )
    created: list[str] = []
    if not new:
        return created
    for name, future in admin.create_topics(new, request_timeout=timeout).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
        else:
            created.append(name)
            log.info("created topic %s", name)
    return created


def delete_topics(settings: KafkaSettings, names: list[str], timeout: float = 30.0) -> None:
    """Delete topics by full name (used to clean up test topics) and return once the
    broker's metadata no longer lists them.

    The controller acknowledges a deletion before every broker's metadata has caught up,
    so for a moment afterwards the topics are still listed; a caller that recreates a
    topic of the same name, or checks that it is gone, would race with that.  Raises
    ``TimeoutError`` if they are still listed after ``timeout`` seconds.
    """
    if not names:
        return
    admin = admin_client(settings)  # must outlive the futures
    for future in admin.delete_topics(names, request_timeout=timeout).values():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].name() != "UNKNOWN_TOPIC_OR_PART":
                raise
    deadline = time.monotonic() + timeout
    while True:
        listed = set(names) & set(admin.list_topics(timeout=timeout).topics)
        if not listed:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"deleted topics still listed after {timeout:g} s: {sorted(listed)}")
        time.sleep(0.1)


def delete_prefixed_topics(settings: KafkaSettings, timeout: float = 30.0) -> list[str]:
    """Delete every topic under ``settings.topic_prefix``: the platform's, and those the
    worker's Faust app made there (its table changelogs and leader topic).  For the
    throwaway prefixes of tests and benchmarks; refuses an empty prefix.  Deleting only
    the platform's topics left three of Faust's behind per run, and a broker with
    thousands of partitions slowed every client's metadata and every later run."""
    prefix = settings.topic_prefix
    if not prefix:
        raise ValueError("refusing to delete the topics of an empty prefix")
    admin = admin_client(settings)
    names = sorted(t for t in admin.list_topics(timeout=timeout).topics if t.startswith(prefix))
    delete_topics(settings, names, timeout)
    return names
