"""How a notification goes out: one small interface, one class per kind of target.

A channel's :meth:`Channel.send` returns normally when the target took the message, raises
:class:`Transient` for what may work later (timeouts, refused connections, 5xx, 408, 429)
and :class:`Permanent` for what never will (a 4xx answer, a channel not configured).  The
delivery loop records either and retries only the first.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import re
import smtplib
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any, Protocol
from urllib.parse import quote
from zoneinfo import ZoneInfo

import httpx
import orjson
import paho.mqtt.client as mqtt

from iotmon.settings import MqttSettings, NotifierSettings
from producers.mqtt_connect import apply_login
from schemas.alerts import FIELD_PATTERN, AlertEvent, AlertKind

SIGNATURE_HEADER = "X-Iotmon-Signature"
IDEMPOTENCY_HEADER = "X-Iotmon-Idempotency-Key"


class Transient(Exception):
    """Worth another attempt later."""


class Permanent(Exception):
    """No retry will help."""


@dataclass(frozen=True)
class Outgoing:
    """One message to send: the event (for a digest, the latest of ``events``), its
    rendered text, and the key a receiver uses to drop a repeat.  ``kind`` is ``alert``,
    ``escalation`` or ``digest``.  ``states`` are the MQTT channel's publications: (topic,
    the location's current state) pairs, prepared by the notifier."""

    idempotency_key: str
    subscription_id: int
    target: str
    secret: str | None
    event: AlertEvent
    text: str
    kind: str = "alert"
    events: tuple[AlertEvent, ...] = ()
    states: tuple[tuple[str, dict[str, Any]], ...] = ()


class Channel(Protocol):
    async def send(self, message: Outgoing) -> None: ...


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=<hex HMAC-SHA256 of the body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


ANSWER_BYTES = 1024  # of a receiver's answer, read for the log of a failure; the rest never


def _check(status: int, answer: bytes) -> None:
    if status < 300:
        return
    reason = f"HTTP {status}: {answer[:200].decode(errors='replace')}"
    if status >= 500 or status in (408, 425, 429):
        raise Transient(reason)
    raise Permanent(reason)


async def _post(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]) -> None:
    """POST ``body``; only the status and, on a failure, the answer's first kilobyte are
    read (a receiver's giant or endless answer costs nothing)."""
    try:
        async with client.stream("POST", url, content=body, headers=headers) as response:
            answer = b""
            if response.status_code >= 300:
                async for chunk in response.aiter_raw():
                    answer += chunk
                    if len(answer) >= ANSWER_BYTES:
                        break
    except httpx.TimeoutException as exc:
        raise Transient(f"timed out: {exc!r}") from exc
    except httpx.TransportError as exc:
        raise Transient(f"could not connect: {exc!r}") from exc
    _check(response.status_code, answer)


class WebhookChannel:
    """A JSON POST with the event, the text, an HMAC-SHA256 signature of the body (with the
    subscription's secret) and the idempotency key in headers."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    @staticmethod
    def body(message: Outgoing) -> bytes:
        body: dict[str, Any] = {
            "idempotency_key": message.idempotency_key,
            "subscription_id": message.subscription_id,
            "kind": message.kind,
            "text": message.text,
            "event": message.event.model_dump(mode="json"),
        }
        if message.kind == "digest":
            body["events"] = [e.model_dump(mode="json") for e in message.events]
        return orjson.dumps(body)

    async def send(self, message: Outgoing) -> None:
        body = self.body(message)
        headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: message.idempotency_key}
        if message.secret:
            headers[SIGNATURE_HEADER] = sign(message.secret, body)
        await _post(self.client, message.target, body, headers)


SLACK_SECTION_MAX = 3000  # characters of one section block's text (Slack refuses more)
SLACK_BLOCKS_MAX = 50  # blocks of one message
SLACK_TEXT_MAX = 40000  # the top-level text


def slack_sections(text: str) -> list[str]:
    """``text`` cut at line ends into section texts Slack takes (a digest of many events
    would exceed one section); a line longer than a section is cut, and what does not fit
    in the blocks is counted in the last one."""
    parts: list[str] = []
    current = ""
    for full in text.splitlines():
        line = full[: SLACK_SECTION_MAX - 1]
        if current and len(current) + 1 + len(line) > SLACK_SECTION_MAX:
            parts.append(current)
            current = ""
        current = f"{current}\n{line}" if current else line
    if current:
        parts.append(current)
    if len(parts) > SLACK_BLOCKS_MAX:
        rest = len(parts) - SLACK_BLOCKS_MAX + 1
        parts = [*parts[: SLACK_BLOCKS_MAX - 1], f"… ({rest} more sections in the text)"]
    return parts or [" "]


class SlackChannel:
    """Slack's incoming-webhook format: ``text`` (the fallback) and one section block."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    @staticmethod
    def body(message: Outgoing) -> bytes:
        return orjson.dumps(
            {
                "text": message.text[:SLACK_TEXT_MAX],
                "blocks": [
                    {"type": "section", "text": {"type": "mrkdwn", "text": part}}
                    for part in slack_sections(message.text)
                ],
            }
        )

    async def send(self, message: Outgoing) -> None:
        await _post(
            self.client,
            message.target,
            self.body(message),
            {"Content-Type": "application/json", IDEMPOTENCY_HEADER: message.idempotency_key},
        )


# -- message texts ---------------------------------------------------------------------------

_METRIC = {
    "en": {
        "temperature": "Temperature",
        "humidity": "Humidity",
        "pcv_temperature": "Perceived temperature",
    },
    "ko": {"temperature": "온도", "humidity": "습도", "pcv_temperature": "체감온도"},
}
_UNIT = {"temperature": "°C", "humidity": "%", "pcv_temperature": "°C"}
_LEVEL = {
    "en": {"warning": "WARNING", "critical": "CRITICAL"},
    "ko": {"warning": "주의", "critical": "위험"},
}
_TRANSITION = {
    "en": {
        "raised": "raised",
        "escalated": "escalated",
        "deescalated": "eased",
        "resolved": "resolved",
    },
    "ko": {"raised": "발생", "escalated": "상향", "deescalated": "하향", "resolved": "해제"},
}


def _place(event: AlertEvent, language: str) -> str:
    parts: list[str] = [p for p in (event.factory, event.building) if p]
    if event.floor is not None:
        parts.append(f"{event.floor}층" if language == "ko" else f"{event.floor}F")
    if event.area:
        parts.append(event.area)
    where = " / ".join(parts) or event.loc_id
    sensor = "센서" if language == "ko" else "sensor"
    return f"{where} ({event.loc_id}, {sensor} {event.sensor_id})"


def render(
    event: AlertEvent, language: str = "ko", link: str | None = None, tz: str = "Asia/Seoul"
) -> str:
    """The text of a notification in Korean (``ko``) or English (``en``)."""
    lang = "en" if language == "en" else "ko"
    level = _LEVEL[lang].get(event.level.value, event.level.value)
    if event.transition.value == "resolved":
        # Over: the tag says so first, the level it had after it (a reader must not take
        # a value back under the band for a critical one).
        level = f"해제 · 이전 {level}" if lang == "ko" else f"RESOLVED · was {level}"
    when = event.decided_at.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %Z")
    transition = _TRANSITION[lang].get(event.transition.value, event.transition.value)
    place = _place(event, lang)
    if event.kind is AlertKind.SENSOR_SILENT:
        what = "센서 무응답" if lang == "ko" else "Sensor silent"
        text = f"[{level}] {what} — {place}: {transition} {when}"
    else:
        metric = _METRIC[lang].get(event.metric or "", event.metric or "")
        unit = _UNIT.get(event.metric or "", "")
        value = f"{event.measured_value}{unit}" if event.measured_value is not None else "—"
        band = _band(event, lang)
        text = f"[{level}] {metric} {value} — {place}{band}: {transition} {when}"
    return f"{text}\n{fill_link(link, event)}" if link else text


def render_escalation(
    event: AlertEvent,
    after_s: int,
    language: str = "ko",
    link: str | None = None,
    tz: str = "Asia/Seoul",
) -> str:
    """The text of an escalation: the alert, not acknowledged for ``after_s``."""
    en = language == "en"
    if after_s % 60 == 0:
        span = f"{after_s // 60} min" if en else f"{after_s // 60}분"
    else:
        span = f"{after_s} s" if en else f"{after_s}초"
    head = (
        f"[ESCALATION] critical alert not acknowledged for {span}"
        if en
        else f"[에스컬레이션] 위험 경보가 {span} 동안 확인되지 않았습니다"
    )
    return f"{head}\n{render(event, language, link, tz)}"


DIGEST_LINES = 50  # a digest lists at most this many events, then counts the rest


def render_digest(
    events: list[AlertEvent], language: str = "ko", link: str | None = None, tz: str = "Asia/Seoul"
) -> str:
    """One message for many events (a subscription over its rate limit): a count, then one
    line per event, oldest first."""
    en = language == "en"
    head = (
        f"[DIGEST] {len(events)} alert notifications (rate limit reached)"
        if en
        else f"[요약] 경보 알림 {len(events)}건 (발송 한도 도달)"
    )
    lines = [f"• {render(e, language, None, tz).splitlines()[0]}" for e in events[:DIGEST_LINES]]
    rest = len(events) - DIGEST_LINES
    if rest > 0:
        lines.append(f"… and {rest} more" if en else f"… 외 {rest}건")
    text = "\n".join([head, *lines])
    return f"{text}\n{fill_link(link, events[-1])}" if link else text


LINK_FIELDS = ("loc_id", "alert_id", "sensor_id", "factory")


def fill_link(link: str, event: AlertEvent) -> str:
    """``link`` with ``{loc_id}``, ``{alert_id}``, ``{sensor_id}`` and ``{factory}``
    replaced by the event's values, URL-encoded (e.g. a dashboard's location page:
    ``https://board.example/#/location/{loc_id}``); other text is left as it is."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in LINK_FIELDS:
            return match.group(0)
        return quote(str(getattr(event, name) or ""), safe="")

    return FIELD_PATTERN.sub(value, link)


def _band(event: AlertEvent, lang: str) -> str:
    if event.threshold_min is None and event.threshold_max is None:
        return ""
    low, high = event.threshold_min, event.threshold_max
    if lang == "ko":
        rng = (
            f"{low} 이상"
            if high is None
            else f"{low}~{high}"
            if low is not None
            else f"{high} 이하"
        )
        return f", 기준 {event.threshold_level} ({rng})"
    rng = f"≥ {low}" if high is None else f"{low}–{high}" if low is not None else f"≤ {high}"
    return f", band {event.threshold_level} ({rng})"


def channels(
    client: httpx.AsyncClient,
    settings: NotifierSettings | None = None,
    mqtt_settings: MqttSettings | None = None,
) -> dict[str, Any]:
    """The channels this notifier has, by ``notify_type`` (e-mail when an SMTP host is
    set, MQTT when a broker is given)."""
    out: dict[str, Any] = {"webhook": WebhookChannel(client), "slack": SlackChannel(client)}
    if mqtt_settings is not None:
        out["mqtt"] = MqttChannel(mqtt_settings, settings.timeout_s if settings else 10.0)
    if settings is not None and settings.smtp_host:
        out["email"] = EmailChannel(
            settings.smtp_host,
            settings.smtp_port,
            sender=settings.smtp_from,
            starttls=settings.smtp_starttls,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            timeout_s=settings.timeout_s,
        )
    return out


class EmailChannel:
    """E-mail over SMTP: plain text and HTML, STARTTLS (the server's certificate checked)
    and login when configured.  smtplib runs in a thread; 5xx answers are permanent,
    4xx answers and connection trouble transient."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        sender: str,
        starttls: bool = True,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.starttls, self.username, self.password = starttls, username, password
        self.timeout_s = timeout_s

    def message(self, message: Outgoing) -> EmailMessage:
        event = message.event
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = message.target
        mail["Subject"] = message.text.splitlines()[0][:200]
        mail["Message-ID"] = make_msgid(idstring=message.idempotency_key.replace(":", "."))
        mail["X-Iotmon-Idempotency-Key"] = message.idempotency_key
        mail.set_content(message.text)
        rows = "".join(
            f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in (
                ("factory", event.factory),
                ("building", event.building),
                ("floor", event.floor),
                ("area", event.area),
                ("location", event.loc_id),
                ("sensor", event.sensor_id),
                ("metric", event.metric),
                ("value", event.measured_value),
                ("level", event.level.value),
                ("band", event.threshold_level),
                ("transition", event.transition.value),
                ("at", event.decided_at.isoformat()),
            )
            if v is not None
        )
        text = "<br>".join(html.escape(line) for line in message.text.splitlines())
        mail.add_alternative(f"<p>{text}</p><table>{rows}</table>", subtype="html")
        return mail

    def _send(self, mail: EmailMessage) -> None:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(mail)
        except smtplib.SMTPResponseException as exc:
            reason = f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"
            raise (Permanent if exc.smtp_code >= 500 else Transient)(reason) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            raise Permanent(f"recipients refused: {exc.recipients}") from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise Transient(f"SMTP: {exc!r}") from exc

    async def send(self, message: Outgoing) -> None:
        await asyncio.to_thread(self._send, self.message(message))


# -- MQTT: the retained state of each location ------------------------------------------------


def fill_topic(template: str, event: AlertEvent) -> str:
    """The topic of ``event``'s location: each ``{field}`` replaced by the event's value,
    ``_`` where it has none; characters that would change the topic's levels (``/``, ``+``,
    ``#``) in a value become ``_``."""

    def value(match: re.Match[str]) -> str:
        raw = getattr(event, match.group(1), None)
        text = "_" if raw is None or raw == "" else str(raw)
        return re.sub(r"[/+#\x00]", "_", text)

    return FIELD_PATTERN.sub(value, template)


def location_state(
    event: AlertEvent, active: list[dict[str, Any]], now: datetime | None = None
) -> dict[str, Any]:
    """The state of ``event``'s location for andon boards: its active alerts (from the
    database, ``active``, with ``event``'s own alert as the event says it is now) and the
    worst level among them (``normal`` with none)."""
    alerts = [a for a in active if str(a["alert_id"]) != str(event.alert_id)]
    if event.transition.value != "resolved":
        alerts.append(
            {
                "alert_id": str(event.alert_id),
                "kind": event.kind.value,
                "metric": event.metric,
                "level": event.level.value,
                "measured_value": event.measured_value,
                "since": event.decided_at,
                "acknowledged": False,
            }
        )
    rank = {"warning": 1, "critical": 2}
    worst = max((rank.get(str(a["level"]), 0) for a in alerts), default=0)
    return {
        "loc_id": event.loc_id,
        "plant": event.plant,
        "factory": event.factory,
        "building": event.building,
        "floor": event.floor,
        "area": event.area,
        "location_name": event.location_name,
        "state": {0: "normal", 1: "warning", 2: "critical"}[worst],
        "active": sorted(alerts, key=lambda a: (-rank.get(str(a["level"]), 0), str(a["metric"]))),
        "last_event": {
            "event_id": str(event.event_id),
            "alert_id": str(event.alert_id),
            "transition": event.transition.value,
            "sensor_id": event.sensor_id,
            "metric": event.metric,
            "level": event.level.value,
            "decided_at": event.decided_at,
        },
        "updated_at": now or datetime.now(UTC),
    }


class MqttChannel:
    """Publishes each location's state, retained at QoS 1, so a board that (re)connects
    sees the current state at once.  One connection (paho's network thread), opened on the
    first message; a publish the broker has not acknowledged in time is transient."""

    def __init__(self, settings: MqttSettings, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.client: mqtt.Client | None = None
        self.connected = threading.Event()
        self.refused: str | None = None
        self._lock = threading.Lock()

    def _client(self) -> mqtt.Client:
        with self._lock:
            if self.client is not None:
                return self.client
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=self.settings.username or "",
                clean_session=True,
            )
            apply_login(client, self.settings)

            def on_connect(c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
                if reason.is_failure:
                    self.refused = str(reason)
                    self.connected.clear()
                else:
                    self.refused = None
                    self.connected.set()

            def on_disconnect(c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
                self.connected.clear()

            client.on_connect = on_connect
            client.on_disconnect = on_disconnect
            client.reconnect_delay_set(1, 30)
            client.connect_async(self.settings.host, self.settings.port, keepalive=30)
            client.loop_start()
            self.client = client
            return client

    def _publish(self, publications: tuple[tuple[str, dict[str, Any]], ...]) -> None:
        client = self._client()
        if not self.connected.wait(self.timeout_s):
            hint = f" ({self.refused})" if self.refused else ""
            raise Transient(
                f"MQTT broker {self.settings.host}:{self.settings.port} not reachable{hint}"
            )
        infos = []
        for topic, state in publications:
            info = client.publish(topic, orjson.dumps(state, default=str), qos=1, retain=True)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise Transient(f"MQTT publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
            infos.append((topic, info))
        for topic, info in infos:
            info.wait_for_publish(self.timeout_s)
            if not info.is_published():
                raise Transient(f"MQTT broker did not acknowledge {topic!r} in time")

    async def send(self, message: Outgoing) -> None:
        if not message.states:
            raise Permanent("no location state to publish")
        await asyncio.to_thread(self._publish, message.states)

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
