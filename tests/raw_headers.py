"""Write Kafka records whose header names are arbitrary bytes, as a foreign client can.

Neither client we use writes a header name that is not UTF-8 (confluent-kafka turns bytes
into their ``repr``); aiokafka's pure-Python record builder writes whatever the name's
``encode()`` returns.  Run in its own process (``AIOKAFKA_NO_EXTENSIONS`` picks that builder
at import), through :func:`produce`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaProducer


@dataclass(frozen=True)
class RawRecord:
    topic: str
    value: bytes
    headers: list[tuple[bytes, bytes]]
    key: bytes | None = None
    partition: int = 0


def produce(bootstrap_servers: str, records: list[RawRecord]) -> None:
    """Write ``records`` in order, each its own batch; raises if any is not written."""
    lines = [
        orjson.dumps(
            {
                "topic": r.topic,
                "partition": r.partition,
                "key": None if r.key is None else r.key.hex(),
                "value": r.value.hex(),
                "headers": [[n.hex(), v.hex()] for n, v in r.headers],
            }
        )
        for r in records
    ]
    subprocess.run(
        [sys.executable, "-m", "tests.raw_headers", bootstrap_servers],
        input=b"\n".join(lines),
        env={**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"},
        check=True,
        timeout=60,
    )


class _Name(str):
    """A header name that encodes to the bytes it was made with."""

    raw: bytes

    def __new__(cls, raw: bytes) -> _Name:
        name = super().__new__(cls, raw.decode("utf-8", "replace"))
        name.raw = raw
        return name

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


async def _send(bootstrap_servers: str, docs: list[dict[str, object]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        for doc in docs:
            key = doc["key"]
            await producer.send_and_wait(
                str(doc["topic"]),
                bytes.fromhex(str(doc["value"])),
                key=None if key is None else bytes.fromhex(str(key)),
                partition=int(str(doc["partition"])),
                headers=[
                    (_Name(bytes.fromhex(n)), bytes.fromhex(v))
                    for n, v in doc["headers"]  # type: ignore[attr-defined]
                ],
            )
    finally:
        await producer.stop()


if __name__ == "__main__":
    assert os.environ.get("AIOKAFKA_NO_EXTENSIONS"), "the pure-Python builder is needed"
    asyncio.run(_send(sys.argv[1], [orjson.loads(line) for line in sys.stdin.buffer if line]))
