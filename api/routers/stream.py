"""Live views as Server-Sent Events, read straight from Kafka (`/api/v1/stream/...`).

* ``/stream/realtime``: every new latest status of a sensor (the compacted latest topic), in
  the shape of one ``/realtime`` measurement.  The worker writes one per sensor and batch
  of records it processed (at most 200 records, tens of milliseconds), the newest; a status
  that a newer reading replaced within the same batch is not sent, while the alert events
  it caused are.
* ``/stream/alerts``: every alert event (raised, escalated, de-escalated, resolved).

Each connection reads the topic with its own consumer (no consumer group, nothing committed).
Every event's ``id`` is the connection's position in the topic: ``<partition>:<next
offset>`` for every partition.  A client that reconnects with that id in ``Last-Event-ID``
(or ``?last_event_id=``, for clients that cannot set headers) resumes exactly after it and
misses nothing the topic still retains, up to ``api.stream_max_replay`` records back per
partition (an older or made-up id starts there; partitions the id does not name, likewise).
The first event, ``ready``, carries the starting position, so that a client has a resume
point before anything happened, and ``replay_cut: true`` when the resume was cut short.

Every client (a token's subject, or else the peer's address) may hold
``api.stream_max_per_client`` streams (429 beyond), and the API ``api.stream_max_clients``
in all (503 beyond).

A record a stream cannot render (not a status or alert event, or anything else that fails
on it) is skipped, counted and dead-lettered (:mod:`api.poison`); the stream goes on.  The
database failing while a record is rendered ends the stream, and the client resumes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import orjson
import psycopg
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Header, HTTPException, Query, Request
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from api.deps import AppSettings, Caller, Reader
from api.poison import PoisonRecords
from api.routers.realtime import decimal_text
from iotmon.settings import Settings
from schemas.alerts import AlertEvent
from schemas.common import Metric
from schemas.master import LOC_ID_PATTERN, SENSOR_ID_PATTERN
from schemas.readings import SensorStatus
from schemas.topics import TopicId, topic_name

log = logging.getLogger(__name__)

router = APIRouter(prefix="/stream", tags=["live"])

# Offsets of at most 18 digits: always below 2**63, what Kafka can be asked for.
_POSITION = re.compile(r"^\d{1,5}:\d{1,18}(,\d{1,5}:\d{1,18}){0,999}$")


def parse_position(raw: str | None) -> dict[int, int] | None:
    """``"0:12,1:40"`` -> ``{0: 12, 1: 40}``; None for no id; 422 for a malformed one."""
    if raw is None or not raw.strip():
        return None
    raw = raw.strip()
    if not _POSITION.match(raw):
        raise HTTPException(
            422, "Last-Event-ID: expected the id of an event of this stream (p:offset,...)"
        )
    return {int(p): int(o) for p, o in (part.split(":") for part in raw.split(","))}


def format_position(position: dict[int, int]) -> str:
    return ",".join(f"{p}:{o}" for p, o in sorted(position.items()))


class LocationCache:
    """loc_id -> (factory, building, floor, area) from the database, reloaded when a
    location is missing, at most every ``min_interval_s``."""

    def __init__(self, pool: AsyncConnectionPool, min_interval_s: float = 5.0) -> None:
        self._pool = pool
        self._min_interval_s = min_interval_s
        self._places: dict[str, dict[str, Any]] = {}
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def get(self, loc_id: str) -> dict[str, Any] | None:
        place = self._places.get(loc_id)
        if place is None and time.monotonic() - self._loaded_at >= self._min_interval_s:
            async with self._lock:
                if time.monotonic() - self._loaded_at >= self._min_interval_s:
                    await self._reload()
            place = self._places.get(loc_id)
        return place

    async def _reload(self) -> None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT loc_id, factory, building, floor, area FROM locations")
            self._places = {r["loc_id"]: r for r in await cur.fetchall()}
        self._loaded_at = time.monotonic()


def _cache(request: Request) -> LocationCache:
    cache: LocationCache | None = getattr(request.app.state, "locations", None)
    if cache is None:
        cache = LocationCache(request.app.state.pool)
        request.app.state.locations = cache
    return cache


Event = tuple[str, dict[str, Any]]  # (event type, data)
M = TypeVar("M", bound=BaseModel)


class _Tail:
    """A started consumer assigned to every partition of a topic, positioned at ``start``
    (or the end)."""

    # A failure of these while rendering is the database's, not the record's.
    transient = (psycopg.OperationalError, PoolTimeout)

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        position: dict[int, int],
        name: str,
        topic_id: TopicId,
        poison: PoisonRecords,
        truncated: bool = False,
    ) -> None:
        self.consumer = consumer
        self.position = position
        self.name = name
        self.topic_id = topic_id
        self.poison = poison
        self.truncated = truncated

    @classmethod
    async def open(
        cls,
        settings: Settings,
        topic: TopicId,
        start: dict[int, int] | None,
        poison: PoisonRecords,
        max_replay: int,
    ) -> _Tail:
        name = topic_name(topic, settings.kafka.topic_prefix)
        consumer = AIOKafkaConsumer(
            **settings.kafka.aiokafka_options(),
            client_id=f"{settings.kafka.client_id}-api-stream",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=10000,
        )
        try:
            await consumer.start()
            if name not in await consumer.topics():
                raise HTTPException(503, f"the topic {name} does not exist yet")
            # Without a group, a subscription is assigned every partition of the topic.
            consumer.subscribe([name])
            deadline = time.monotonic() + 10
            while not consumer.assignment():
                if time.monotonic() > deadline:
                    raise HTTPException(503, f"no partitions of {name} were assigned")
                await asyncio.sleep(0.05)
            tps = sorted(consumer.assignment(), key=lambda tp: tp.partition)
            truncated = False
            if start is None:
                await consumer.seek_to_end(*tps)
            else:
                ends = await consumer.end_offsets(tps)
                for tp in tps:
                    # A client resumes at most max_replay records back per partition (an
                    # old or made-up id would replay the whole topic); the ready event
                    # says when it was cut.
                    wanted = start.get(tp.partition, 0)
                    earliest = max(0, ends[tp] - max_replay)
                    if wanted < earliest:
                        truncated = True
                        wanted = earliest
                    elif wanted > ends[tp]:
                        # Past the end (no such event): from the end, not (as Kafka's
                        # reset would have it) from the oldest record.
                        truncated = True
                        wanted = ends[tp]
                    consumer.seek(tp, wanted)
            position = {tp.partition: await consumer.position(tp) for tp in tps}
        except HTTPException:
            await consumer.stop()
            raise
        except KafkaError as exc:
            await consumer.stop()
            raise HTTPException(503, f"Kafka is unavailable: {exc}", {"Retry-After": "5"}) from None
        return cls(consumer, position, name, topic, poison, truncated)

    async def events(self, render: Callable[[bytes], Any]) -> AsyncIterator[ServerSentEvent]:
        """``ready`` with the starting position, then every rendered record, forever."""
        position = self.position
        try:
            yield ServerSentEvent(
                data=orjson.dumps({"topic": self.name, "replay_cut": self.truncated}).decode(),
                event="ready",
                id=format_position(position),
            )
            while True:
                batches = await self.consumer.getmany(timeout_ms=1000, max_records=500)
                for tp, records in batches.items():
                    for record in records:
                        position[tp.partition] = record.offset + 1
                        if record.value is None:
                            continue
                        try:
                            rendered = await render(record.value)
                        except self.transient:
                            raise  # the database is away: the stream ends, the client resumes
                        except Exception as exc:  # noqa: BLE001 - one record, not the stream
                            self.poison.report(
                                f"stream.{self.topic_id}",
                                exc,
                                topic=self.name,
                                partition=tp.partition,
                                offset=record.offset,
                                key=record.key,
                                value=record.value,
                            )
                            continue
                        if rendered is None:
                            continue
                        event, data = rendered
                        yield ServerSentEvent(
                            data=orjson.dumps(data).decode(),
                            event=event,
                            id=format_position(position),
                        )
        finally:
            await self.consumer.stop()


def _decode(model: type[M], raw: bytes) -> M:
    """The record as ``model``; ValidationError (the stream's boundary dead-letters it)."""
    return model.model_validate_json(raw)


class _Clients:
    """Counts open streams, in all and per client, so that one deployment's limit holds
    (503 beyond it) and no one client takes every slot (429 beyond its share)."""

    def __init__(self) -> None:
        self.open = 0
        self.by_client: dict[str, int] = {}

    def take(self, client: str) -> None:
        self.open += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1

    def give_back(self, client: str) -> None:
        self.open -= 1
        left = self.by_client[client] - 1
        if left:
            self.by_client[client] = left
        else:
            del self.by_client[client]


def client_of(request: Request, caller: Caller) -> str:
    """Who a stream is counted against: the bearer token itself (a static token is shared
    by its role's holders, and a JWT names its subject), else the peer's address (as
    uvicorn reports it: behind a proxy, see FORWARDED_ALLOW_IPS in docs/api.md)."""
    if caller.role is not None:
        token = request.headers.get("authorization", "").partition(" ")[2].strip()
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    return f"address:{request.client.host if request.client else 'unknown'}"


def _admit(request: Request, settings: Settings, client: str) -> _Clients:
    clients: _Clients | None = getattr(request.app.state, "stream_clients", None)
    if clients is None:
        clients = request.app.state.stream_clients = _Clients()
    mine = clients.by_client.get(client, 0)
    if mine >= settings.api.stream_max_per_client:
        raise HTTPException(
            429,
            f"this client has {mine} live streams open (the limit per client); close one"
            " or retry later",
            {"Retry-After": "10"},
        )
    if clients.open >= settings.api.stream_max_clients:
        raise HTTPException(
            503,
            f"{clients.open} live streams are open (the limit); retry later",
            {"Retry-After": "10"},
        )
    return clients


async def _respond(
    request: Request,
    settings: Settings,
    caller: Caller,
    topic: TopicId,
    last_event_id: str | None,
    render: Callable[[bytes], Any],
) -> EventSourceResponse:
    start = parse_position(last_event_id)
    client = client_of(request, caller)
    clients = _admit(request, settings, client)
    clients.take(client)
    try:
        tail = await _Tail.open(
            settings, topic, start, request.app.state.poison, settings.api.stream_max_replay
        )
    except BaseException:
        clients.give_back(client)
        raise

    closed = False

    async def close() -> None:
        # Runs when the stream ends, and again as the response's background task, which
        # also covers a client gone before the first event (the generator never started).
        nonlocal closed
        if not closed:
            closed = True
            clients.give_back(client)
            await tail.consumer.stop()

    async def events() -> AsyncIterator[ServerSentEvent]:
        try:
            async for event in tail.events(render):
                yield event
        finally:
            await close()

    return EventSourceResponse(
        events(),
        ping=settings.api.stream_ping_s,
        headers={"Cache-Control": "no-store"},
        background=BackgroundTask(close),
    )


Text = Annotated[str | None, Query(max_length=100)]
LastEventId = Annotated[str | None, Header(max_length=20000)]
LastEventIdQuery = Annotated[
    str | None,
    Query(alias="last_event_id", max_length=20000, description="as the Last-Event-ID header"),
]


@router.get(
    "/realtime",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def realtime(
    caller: Reader,
    request: Request,
    settings: AppSettings,
    factory: Text = None,
    building: Text = None,
    floor: Annotated[int | None, Query(ge=-100, le=500)] = None,
    loc_id: Annotated[str | None, Query(pattern=LOC_ID_PATTERN)] = None,
    sensor_id: Annotated[str | None, Query(pattern=SENSOR_ID_PATTERN)] = None,
    last_event_id: LastEventId = None,
    last_event_id_query: LastEventIdQuery = None,
) -> EventSourceResponse:
    """Event ``reading`` for every new latest status, filtered as ``/realtime/location``."""
    cache = _cache(request)
    stale_after = settings.api.stale_after_s

    async def render(raw: bytes) -> Event | None:
        status = _decode(SensorStatus, raw)
        if (sensor_id and status.sensor_id != sensor_id) or (loc_id and status.loc_id != loc_id):
            return None
        place = await cache.get(status.loc_id)
        if factory is not None or building is not None or floor is not None:
            if place is None:
                return None
            for key, wanted in (("factory", factory), ("building", building), ("floor", floor)):
                if wanted is not None and place[key] != wanted:
                    return None
        age = max(0.0, (datetime.now(UTC) - status.capture_dt).total_seconds())
        return "reading", {
            "sensor_id": status.sensor_id,
            "location": place or {"loc_id": status.loc_id},
            "metrics": {
                m: {
                    "value": decimal_text(getattr(status, m)),
                    "status": getattr(status, f"{m}_status"),
                }
                for m in ("temperature", "humidity", "pcv_temperature")
            },
            "capture_dt": status.capture_dt.isoformat(),
            "age_seconds": round(age, 3),
            "stale": age > stale_after,
        }

    return await _respond(
        request, settings, caller, "latest", last_event_id or last_event_id_query, render
    )


@router.get(
    "/alerts",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def alerts(
    caller: Reader,
    request: Request,
    settings: AppSettings,
    sensor_id: Annotated[str | None, Query(pattern=SENSOR_ID_PATTERN)] = None,
    loc_id: Annotated[str | None, Query(pattern=LOC_ID_PATTERN)] = None,
    factory: Text = None,
    building: Text = None,
    alert_type: Metric | None = None,
    metric: Annotated[Metric | None, Query(description="the same as alert_type")] = None,
    level: Annotated[str | None, Query(pattern="^(warning|critical)$")] = None,
    kind: Annotated[str | None, Query(pattern="^(threshold|sensor_silent)$")] = None,
    last_event_id: LastEventId = None,
    last_event_id_query: LastEventIdQuery = None,
) -> EventSourceResponse:
    """Event ``alert`` for every alert event, filtered as ``/alerts/``."""
    cache = _cache(request)

    async def render(raw: bytes) -> Event | None:
        event = _decode(AlertEvent, raw)
        for wanted, actual in (
            (sensor_id, event.sensor_id),
            (loc_id, event.loc_id),
            (alert_type or metric, event.metric),
            (level, event.level.value),
            (kind, event.kind.value),
        ):
            if wanted is not None and actual != wanted:
                return None
        place = await cache.get(event.loc_id)
        for key, wanted in (("factory", factory), ("building", building)):
            if wanted is not None and (place is None or place[key] != wanted):
                return None
        return "alert", {**event.model_dump(mode="json"), "factory": place and place["factory"]}

    return await _respond(
        request, settings, caller, "alerts", last_event_id or last_event_id_query, render
    )
