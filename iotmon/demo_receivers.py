"""The demo's delivery targets: a webhook receiver and an SMTP sink on 127.0.0.1.

:class:`WebhookReceiver` is an HTTP server on a free port of the loopback interface.  It
takes JSON POSTs on two paths:

``/webhook``
    iotmon's signed webhook.  The body must carry ``X-Iotmon-Signature: sha256=<hex
    HMAC-SHA256 of the body>`` made with the receiver's secret; the receiver checks it the
    way docs/notifications.md tells receivers to (constant-time compare), answers 401 and
    keeps nothing when it is missing or wrong, 200 and keeps the message when it matches.
``/slack``
    Slack's incoming-webhook format (``text`` and blocks), unsigned, as Slack takes it.

:class:`SmtpSink` is an SMTP server (aiosmtpd) on a free loopback port, without TLS or
login, that keeps every message it is given.

Both run in threads of the calling process, keep what they got in :class:`Delivery`
records (safe to read while they run), and stop with :meth:`close`.  They are for trying
iotmon on one machine; neither is meant to face a network.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from aiosmtpd.controller import Controller

from stream_apps.notifier.channels import IDEMPOTENCY_HEADER, SIGNATURE_HEADER

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # a notification is a few kB; refuse anything much larger


@dataclass(frozen=True)
class Delivery:
    """One message a receiver took.

    ``verified`` is True for a webhook whose signature matched, None where the channel has
    no signature (Slack, e-mail); a webhook with a wrong or missing signature is refused and
    never becomes a Delivery."""

    channel: str  # "webhook", "slack" or "email"
    text: str
    idempotency_key: str | None = None
    verified: bool | None = None
    recipient: str | None = None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def signature_matches(secret: str, body: bytes, header: str | None) -> bool:
    """True when ``header`` is ``sha256=<hex HMAC-SHA256 of body with secret>``."""
    if not header:
        return False
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.strip().encode())


class _Inbox:
    """What a receiver has taken and refused; shared between its threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._got: list[Delivery] = []
        self._refused: dict[str, int] = {}

    def add(self, delivery: Delivery) -> None:
        with self._lock:
            self._got.append(delivery)

    def refuse(self, channel: str) -> None:
        with self._lock:
            self._refused[channel] = self._refused.get(channel, 0) + 1

    def got(self, channel: str | None = None) -> list[Delivery]:
        with self._lock:
            return [d for d in self._got if channel is None or d.channel == channel]

    def refused(self, channel: str) -> int:
        with self._lock:
            return self._refused.get(channel, 0)


class WebhookReceiver:
    """HTTP on 127.0.0.1 (a free port): ``/webhook`` (signed with ``secret``) and ``/slack``.

    Started by the constructor; :attr:`webhook_url` and :attr:`slack_url` are the targets
    to subscribe.  :meth:`got` lists what was taken, :meth:`refused` counts the refusals."""

    def __init__(self, secret: str, host: str = "127.0.0.1") -> None:
        self.secret = secret
        self.inbox = _Inbox()
        self.server = ThreadingHTTPServer((host, 0), self._handler())
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="demo-webhook", daemon=True
        )
        self._thread.start()
        base = f"http://{host}:{self.server.server_address[1]}"
        self.webhook_url = f"{base}/webhook"
        self.slack_url = f"{base}/slack"

    def got(self, channel: str | None = None) -> list[Delivery]:
        return self.inbox.got(channel)

    def refused(self, channel: str = "webhook") -> int:
        return self.inbox.refused(channel)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def take(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        """Handle one POST; returns the HTTP status to answer."""
        key = headers.get(IDEMPOTENCY_HEADER.lower())
        if path == "/webhook":
            if not signature_matches(self.secret, body, headers.get(SIGNATURE_HEADER.lower())):
                self.inbox.refuse("webhook")
                log.warning("demo webhook: refused a message with a wrong or missing signature")
                return 401
            text = _text_of(body)
            if text is None:
                return 400
            self.inbox.add(Delivery("webhook", text, key, verified=True))
            return 200
        if path == "/slack":
            text = _text_of(body)
            if text is None:
                return 400
            self.inbox.add(Delivery("slack", text, key))
            return 200
        return 404

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_BODY:
                    self.send_response(413 if length > MAX_BODY else 400)
                    self.end_headers()
                    return
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver.take(self.path, body, headers)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("demo webhook: " + format, *args)

        return Handler


def _text_of(body: bytes) -> str | None:
    """The ``text`` of a JSON body (both iotmon's webhook and Slack's format have one)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    text = doc.get("text") if isinstance(doc, dict) else None
    return text if isinstance(text, str) else None


class _Handler:
    """aiosmtpd's handler: every message becomes a Delivery."""

    def __init__(self, inbox: _Inbox) -> None:
        self.inbox = inbox

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        content = envelope.content
        mail = message_from_bytes(
            content if isinstance(content, bytes) else content.encode(), policy=policy.default
        )
        plain = mail.get_body(("plain",)) if isinstance(mail, EmailMessage) else None
        text = plain.get_content() if isinstance(plain, EmailMessage) else ""
        text = text.replace("\r\n", "\n").strip()
        self.inbox.add(
            Delivery(
                "email",
                text or str(mail.get("Subject", "")),
                mail.get(IDEMPOTENCY_HEADER),
                recipient=", ".join(envelope.rcpt_tos),
            )
        )
        return "250 OK"


class SmtpSink:
    """An SMTP server on 127.0.0.1 (a free port) that keeps every message: no TLS, no login.

    Started by the constructor; :attr:`port` is where to send.  :meth:`got` lists the
    messages (their plain-text part, idempotency key and recipients)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        # aiosmtpd logs every connection at INFO; the demo reports what arrived instead.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        self.inbox = _Inbox()
        self.host = host
        self.port = free_port(host)
        self._controller = Controller(_Handler(self.inbox), hostname=host, port=self.port)
        self._controller.start()

    def got(self) -> list[Delivery]:
        return self.inbox.got("email")

    def close(self) -> None:
        self._controller.stop()


@contextmanager
def demo_receivers(secret: str) -> Iterator[tuple[WebhookReceiver, SmtpSink]]:
    """Both receivers, stopped on exit."""
    webhook = WebhookReceiver(secret)
    try:
        smtp = SmtpSink()
    except BaseException:
        webhook.close()
        raise
    try:
        yield webhook, smtp
    finally:
        smtp.close()
        webhook.close()
