"""How every MQTT client of ours logs in: account, password and TLS from the settings."""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt

from iotmon.settings import MqttSettings


def apply_login(client: mqtt.Client, settings: MqttSettings) -> None:
    """Set the client's credentials and, with ``settings.tls``, verify the broker's
    certificate against ``settings.ca_file`` (host name included)."""
    username, password = settings.login()
    if username is not None:
        client.username_pw_set(username, password)
    if settings.tls:
        client.tls_set(
            ca_certs=str(settings.ca_file) if settings.ca_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )


REFUSED_LOGIN_HINT = (
    "the broker refused the account: check IOTMON_MQTT__USERNAME and its password "
    "(`iotmon gateways list`)"
)


def refused_login(reason: object) -> bool:
    """Whether a CONNACK reason says the credentials or the account were refused."""
    text = str(reason).lower()
    return "not authori" in text or "user name or password" in text or "bad user" in text
