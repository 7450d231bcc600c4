"""The demo's receivers (iotmon/demo_receivers.py) on real loopback sockets: the webhook
receiver checks iotmon's signature and refuses a bad one, takes Slack-format posts, and the
SMTP sink keeps what smtplib and the notifier's e-mail channel send.  No broker or database:
the notifier's own channel classes do the sending."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from email.message import EmailMessage
from uuid import uuid4

import httpx
import orjson
import pytest

from iotmon.demo_receivers import SmtpSink, WebhookReceiver, demo_receivers, signature_matches
from schemas.alerts import AlertEvent, AlertKind, AlertTransition
from schemas.common import Status
from stream_apps.notifier.channels import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    EmailChannel,
    Outgoing,
    SlackChannel,
    WebhookChannel,
    sign,
)

pytestmark = pytest.mark.unit

SECRET = "demo-secret-0123456789"


def outgoing(target: str, secret: str | None = SECRET, text: str = "[CRITICAL] hot") -> Outgoing:
    now = datetime.now(UTC)
    event = AlertEvent(
        event_id=uuid4(),
        alert_id=uuid4(),
        kind=AlertKind.THRESHOLD,
        transition=AlertTransition.RAISED,
        sensor_id="TEMPIOT-A011",
        loc_id="A011",
        metric="pcv_temperature",
        level=Status.CRITICAL,
        measured_value=Decimal("34.10"),
        threshold_id=3,
        threshold_level="orange",
        threshold_min=Decimal("33.00"),
        threshold_max=None,
        reading_time=now,
        decided_at=now,
        message="hot",
        factory="SinPyeong",
    )
    return Outgoing(f"{event.event_id}:7", 7, target, secret, event, text)


async def _send(channel_of: type[WebhookChannel] | type[SlackChannel], message: Outgoing) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        await channel_of(client).send(message)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver(SECRET)
    yield r
    r.close()


def test_signature_check_matches_the_notifiers_signature_only() -> None:
    body = b'{"text": "hot"}'
    assert signature_matches(SECRET, body, sign(SECRET, body))
    assert not signature_matches(SECRET, body, sign("another-secret-000000", body))
    assert not signature_matches(SECRET, body + b" ", sign(SECRET, body))
    assert not signature_matches(SECRET, body, None)
    assert not signature_matches(SECRET, body, "")


def test_a_signed_webhook_from_the_notifier_is_recorded_as_verified(
    receiver: WebhookReceiver,
) -> None:
    message = outgoing(receiver.webhook_url, text="[위험] 체감온도 34.10°C")
    asyncio.run(_send(WebhookChannel, message))
    [got] = receiver.got("webhook")
    assert got.verified is True
    assert got.text == "[위험] 체감온도 34.10°C"
    assert got.idempotency_key == message.idempotency_key
    assert receiver.refused() == 0


def test_a_bad_or_missing_signature_is_refused_and_not_recorded(
    receiver: WebhookReceiver,
) -> None:
    body = orjson.dumps({"text": "forged"})
    with httpx.Client(timeout=5) as client:
        wrong = client.post(
            receiver.webhook_url,
            content=body,
            headers={SIGNATURE_HEADER: sign("not-the-shared-secret", body)},
        )
        missing = client.post(receiver.webhook_url, content=body)
        tampered = client.post(
            receiver.webhook_url,
            content=orjson.dumps({"text": "forged!"}),
            headers={SIGNATURE_HEADER: sign(SECRET, body)},
        )
        good = client.post(
            receiver.webhook_url,
            content=body,
            headers={SIGNATURE_HEADER: sign(SECRET, body), IDEMPOTENCY_HEADER: "e:1"},
        )
    assert [wrong.status_code, missing.status_code, tampered.status_code] == [401, 401, 401]
    assert good.status_code == 200
    assert receiver.refused("webhook") == 3
    assert [(d.text, d.idempotency_key, d.verified) for d in receiver.got()] == [
        ("forged", "e:1", True)
    ]


def test_the_notifier_refuses_to_retry_a_refused_signature(receiver: WebhookReceiver) -> None:
    """401 is a permanent refusal for the notifier: a wrong secret fails at once."""
    from stream_apps.notifier.channels import Permanent  # noqa: PLC0415

    with pytest.raises(Permanent, match="HTTP 401"):
        asyncio.run(
            _send(WebhookChannel, outgoing(receiver.webhook_url, secret="wrong-secret-0000"))
        )
    assert receiver.got() == [] and receiver.refused() == 1


def test_slack_format_posts_are_recorded_without_a_signature(receiver: WebhookReceiver) -> None:
    asyncio.run(_send(SlackChannel, outgoing(receiver.slack_url, secret=None, text="slack text")))
    [got] = receiver.got("slack")
    assert (got.text, got.verified) == ("slack text", None)
    with httpx.Client(timeout=5) as client:
        assert client.post(receiver.slack_url, content=b"not json").status_code == 400
        assert client.post(receiver.webhook_url.replace("/webhook", "/x")).status_code == 404
    assert len(receiver.got()) == 1


def test_the_smtp_sink_records_a_message_sent_with_smtplib() -> None:
    sink = SmtpSink()
    try:
        mail = EmailMessage()
        mail["From"] = "iotmon@localhost"
        mail["To"] = "safety@plant.example"
        mail["Subject"] = "[CRITICAL] hot"
        mail[IDEMPOTENCY_HEADER] = "e:9"
        mail.set_content("Perceived temperature 34.1°C at SinPyeong")
        mail.add_alternative("<p>html part</p>", subtype="html")
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as smtp:
            smtp.send_message(mail)
        [got] = sink.got()
    finally:
        sink.close()
    assert got.channel == "email"
    assert got.text == "Perceived temperature 34.1°C at SinPyeong"
    assert got.recipient == "safety@plant.example"
    assert got.idempotency_key == "e:9"


def test_both_receivers_take_the_notifiers_e_mail_and_stop_together() -> None:
    with demo_receivers(SECRET) as (webhook, smtp):
        channel = EmailChannel(smtp.host, smtp.port, sender="iotmon@localhost", starttls=False)
        message = outgoing("safety@plant.example", text="line one\nline two")
        asyncio.run(channel.send(message))
        [got] = smtp.got()
        assert got.text == "line one\nline two"
        assert got.idempotency_key == message.idempotency_key
        assert webhook.got() == []
    with pytest.raises(OSError), smtplib.SMTP(smtp.host, smtp.port, timeout=2):
        pass
