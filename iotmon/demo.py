"""`iotmon demo`: the whole pipeline on the local stack with simulated gateways.

Starts the long-running processes (bridge, ingest, worker, sink) as children with their logs
under the state directory, runs the gateway simulator in the foreground, then stops the children and
prints how many records each topic received.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from iotmon.gateways_cmd import local_gateway
from iotmon.settings import Settings
from schemas.topics import TopicId, topic_name

log = logging.getLogger(__name__)

SERVICES: dict[str, list[str]] = {
    "bridge": ["bridge"],
    "ingest": ["ingest"],
    "worker": ["worker"],
    "sink": ["sink"],
    "api": ["api"],
}

# The demo's API accepts this bearer token (admin) unless IOTMON_API__TOKENS is set.  It is
# for trying the API on one machine, never for a deployment.
DEMO_TOKEN = "demo-admin-token"
# The simulator publishes as this gateway account (created on first use, its password kept
# in the stack's auth directory); the simulated sensors are assigned to it.
DEMO_GATEWAY = "demo-gateway"
DEMO_TOPICS: list[TopicId] = [
    "readings_mqtt",
    "readings_raw",
    "readings",
    "dead_letters",
    "sensors",
    "aggregates_hourly",
    "alerts",
]


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_file: Path


def _iotmon(*args: str) -> list[str]:
    return [sys.executable, "-m", "iotmon", *args]


def start_children(settings: Settings) -> list[Child]:
    logs = settings.stack.state_dir / "demo"
    logs.mkdir(parents=True, exist_ok=True)
    children = []
    env = dict(os.environ)
    if not settings.api.tokens:
        env["IOTMON_API__TOKENS"] = f'{{"{DEMO_TOKEN}": "admin"}}'
        log.info("API write token for this demo: Authorization: Bearer %s", DEMO_TOKEN)
    log.info("API on http://%s:%d (docs at /docs)", settings.api.host, settings.api.port)
    for name, args in SERVICES.items():
        log_file = logs / f"{name}.log"
        with log_file.open("ab") as out:
            proc = subprocess.Popen(_iotmon(*args), stdout=out, stderr=subprocess.STDOUT, env=env)
        children.append(Child(name, proc, log_file))
        log.info("started %s (pid %d), log in %s", name, proc.pid, log_file)
    return children


def stop_children(children: list[Child]) -> None:
    for child in children:
        if child.proc.poll() is None:
            child.proc.terminate()
    for child in children:
        try:
            child.proc.wait(40)
        except subprocess.TimeoutExpired:
            child.proc.kill()


def topic_counts(settings: Settings, ids: list[TopicId]) -> dict[str, int]:
    """Records in each topic (sum of end minus start offsets)."""
    consumer = Consumer({**settings.kafka.client_config(), "group.id": "iotmon-demo-count"})
    counts: dict[str, int] = {}
    try:
        for topic_id in ids:
            name = topic_name(topic_id, settings.kafka.topic_prefix)
            meta = consumer.list_topics(name, timeout=10).topics[name]
            total = 0
            for p in meta.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
                total += high - low
            counts[name] = total
    finally:
        consumer.close()
    return counts


def run_demo(settings: Settings, simulate_args: list[str]) -> int:
    """Run the demo; returns the simulator's exit code."""
    children = start_children(settings)
    try:
        time.sleep(3)  # let the bridge subscribe before gateways publish
        for child in children:
            if child.proc.poll() is not None:
                log.error("%s exited early; see %s", child.name, child.log_file)
                return 1
        if not any(a.startswith("--gateway") for a in simulate_args):
            local_gateway(settings, DEMO_GATEWAY)
            simulate_args = ["--gateway", DEMO_GATEWAY, *simulate_args]
        return subprocess.call(_iotmon("simulate", *simulate_args))
    except KeyboardInterrupt:
        return 130
    finally:
        time.sleep(5)  # let the last readings through the pipeline
        stop_children(children)
        for name, count in topic_counts(
            settings,
            DEMO_TOPICS,
        ).items():
            log.info("topic %-40s %8d records", name, count)
