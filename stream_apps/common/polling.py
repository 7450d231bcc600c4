"""One poll of a confluent-kafka consumer that is both prompt and batched."""

from __future__ import annotations

from confluent_kafka import Consumer, Message


def poll_batch(
    consumer: Consumer, max_messages: int, timeout_s: float, linger_s: float
) -> list[Message]:
    """Up to ``max_messages`` records: waits up to ``timeout_s`` for the first, then at most
    ``linger_s`` for more.

    ``Consumer.consume(n, timeout)`` alone returns only when it has ``n`` records or the
    timeout expired, so at a low rate every record waited the whole timeout (the ingest stage
    added 70 ms at 500 readings/s).  Under load the batch fills at once either way.
    """
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    if max_messages <= 1:
        return [first]
    return [first, *consumer.consume(max_messages - 1, linger_s)]
