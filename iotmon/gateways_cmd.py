"""``iotmon gateways``: MQTT accounts of gateways (and services), kept for Mosquitto.

Works on the local stack's Mosquitto by default (and reloads it); ``--dir`` manages the files
of another one (compose, Kubernetes), which its operator then reloads.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from iotmon.cli_settings import settings_or_exit
from iotmon.mqtt_auth import BRIDGE_ACCOUNT, AuthDir, AuthError, ensure_tls, gateway_topics
from iotmon.settings import ALERTS_ROOT, NOTIFIER_ACCOUNT, MqttSettings, Settings

gateways_app = typer.Typer(
    help="MQTT accounts: each gateway publishes only under its own topics.",
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)

DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="Auth directory of another Mosquitto (default: the local stack's, "
        "IOTMON_MQTT__AUTH_DIR).",
    ),
]


def _auth(settings: Settings, directory: Path | None) -> tuple[AuthDir, bool]:
    """The auth directory, and whether it is the local stack's (which we reload)."""
    assert settings.mqtt.auth_dir is not None  # set by Settings
    path = directory or settings.mqtt.auth_dir
    return AuthDir(path), path.resolve() == settings.mqtt.auth_dir.resolve()


def _refuse_foreign_topics(settings: Settings, name: str, topics: list[str]) -> None:
    """AuthError for a custom topic filter that can match another gateway's topics: one
    that reaches a pattern's ``{gateway}`` level with anything but the account's own name."""
    mqtt = settings.mqtt
    roots = []
    for pattern in [*mqtt.topics, *mqtt.extra_topics]:
        levels = (mqtt.topic_prefix + pattern).split("/")
        if "{gateway}" in levels:
            roots.append(levels[: levels.index("{gateway}")])
    for t in topics:
        levels = t.split("/")
        for root in roots:
            reaches = True
            for i, fixed in enumerate(root):
                if i >= len(levels) or levels[i] == "#":
                    reaches = i < len(levels)  # '#' here covers every gateway
                    break
                if levels[i] not in ("+", fixed):
                    reaches = False
                    break
            else:
                at_gateway = levels[len(root)] if len(levels) > len(root) else None
                reaches = at_gateway is not None and at_gateway != name
            if reaches:
                raise AuthError(
                    f"topic {t!r} can match other gateways' topics ({'/'.join(root)}/...): "
                    "the bridge would take its messages for theirs; use --force if intended"
                )


def local_gateway(settings: Settings, name: str, write: list[str] | None = None) -> MqttSettings:
    """The MQTT settings of gateway ``name`` on the local stack, creating the account (its
    password kept under ``credentials/``) when it has none yet, allowed to write ``write``
    (default: its own reading topics): for the demo and benches."""
    auth, _ = _auth(settings, None)
    topics = write or gateway_topics(settings.mqtt, name)
    account = auth.accounts().get(name)
    if account is None or account.write != topics or not auth.credential_file(name).exists():
        password = auth.add(name, "gateway", write=topics, replace=True)
        auth.save_credential(name, password)
        from iotmon.stack import Stack  # noqa: PLC0415 - only when reloading

        Stack(settings).mosquitto.reload()
        time.sleep(0.5)  # Mosquitto reads the accounts again right after the signal
    return settings.mqtt.model_copy(
        update={
            "username": name,
            "password": None,
            "password_file": auth.credential_file(name),
        }
    )


def _reload(settings: Settings, local: bool, directory: Path) -> None:
    if local:
        from iotmon.stack import Stack  # noqa: PLC0415 - only when reloading

        if Stack(settings).mosquitto.reload():
            err.print("Mosquitto reloaded its accounts.")
            return
        err.print("The local Mosquitto is not running; it reads the accounts when it starts.")
        return
    err.print(
        f"Reload that Mosquitto: with compose, `chmod -R a+rX {directory}` (the files are "
        "rewritten with mode 0600) and `docker compose kill -s HUP mosquitto`; on Kubernetes "
        f"update the Secret iotmon-mqtt-auth from {directory}/passwd and {directory}/acl and "
        "restart the pod."
    )


@gateways_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Account name (letters, digits, '_', '.', '-').")],
    topic: Annotated[
        list[str] | None,
        typer.Option(
            help="A topic filter the gateway may write (repeatable); default: every reading "
            "pattern with {gateway}, filled in with NAME."
        ),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Give an existing account a new password.")
    ] = False,
    save: Annotated[
        bool,
        typer.Option(
            "--save",
            help="Also keep the password in <dir>/credentials/NAME (mode 0600), for a "
            "gateway simulated on this machine (`iotmon simulate --gateway NAME`).",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Allow --topic filters that reach into other gateways' topics (they could "
            "then speak for those gateways).",
        ),
    ] = False,
    directory: DirOption = None,
) -> None:
    """Create a gateway account and print its password once (it is stored only hashed)."""
    settings = settings_or_exit()
    auth, local = _auth(settings, directory)
    try:
        topics = list(topic) if topic else gateway_topics(settings.mqtt, name)
        if topic and not force:
            _refuse_foreign_topics(settings, name, topics)
        if name in (BRIDGE_ACCOUNT, NOTIFIER_ACCOUNT):
            raise AuthError(f"{name!r} is a service's account")
        password = auth.add(name, "gateway", write=topics, replace=replace)
    except AuthError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if save:
        auth.save_credential(name, password)
    err.print(f"Gateway {name!r} may publish to: {', '.join(topics)}")
    err.print("Its password (shown once; give it to the gateway):")
    out.print(password, highlight=False, soft_wrap=True)
    _reload(settings, local, auth.path)


@gateways_app.command("add-reader")
def add_reader(
    name: Annotated[str, typer.Argument(help="Account name (letters, digits, '_', '.', '-').")],
    topic: Annotated[
        list[str] | None,
        typer.Option(
            help=f"A topic filter it may read (repeatable); default: {ALERTS_ROOT}/#, the "
            "alert states the notifier publishes."
        ),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Give an existing account a new password.")
    ] = False,
    directory: DirOption = None,
) -> None:
    """Create a read-only account (an andon board, a stack light, a PLC): it may subscribe
    to the alert states and publish nothing.  Prints its password once."""
    settings = settings_or_exit()
    auth, local = _auth(settings, directory)
    topics = list(topic) if topic else [f"{ALERTS_ROOT}/#"]
    try:
        if name in (BRIDGE_ACCOUNT, NOTIFIER_ACCOUNT):
            raise AuthError(f"{name!r} is a service's account")
        password = auth.add(name, "reader", read=topics, replace=replace)
    except AuthError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    err.print(f"Reader {name!r} may subscribe to: {', '.join(topics)}")
    err.print("Its password (shown once):")
    out.print(password, highlight=False, soft_wrap=True)
    _reload(settings, local, auth.path)


@gateways_app.command("list")
def list_accounts(directory: DirOption = None) -> None:
    """The accounts and the topics each may write or read."""
    settings = settings_or_exit()
    auth, _ = _auth(settings, directory)
    table = Table("account", "kind", "may write", "may read", "created")
    for account in auth.accounts().values():
        table.add_row(
            account.name,
            account.kind,
            "\n".join(account.write),
            "\n".join(account.read),
            account.created_at[:19],
        )
    out.print(table)


@gateways_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="The account to remove.")],
    directory: DirOption = None,
) -> None:
    """Remove an account; the broker refuses it from the reload on."""
    settings = settings_or_exit()
    auth, local = _auth(settings, directory)
    try:
        auth.revoke(name)
    except AuthError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    err.print(f"Account {name!r} revoked.")
    _reload(settings, local, auth.path)


@gateways_app.command("init")
def init(
    directory: Annotated[Path, typer.Option("--dir", help="Auth directory to create.")],
    host: Annotated[
        list[str],
        typer.Option(help="Host name or address gateways connect to (repeatable)."),
    ],
) -> None:
    """Prepare the auth directory of a deployed Mosquitto (compose, Kubernetes): the
    bridge's account, empty password/ACL files, a CA and the TLS listener's certificate."""
    settings_or_exit()
    auth = AuthDir(directory)
    auth.add_service(BRIDGE_ACCOUNT, write=[], read=["#"])
    auth.add_service(NOTIFIER_ACCOUNT, write=[f"{ALERTS_ROOT}/#"], read=[])
    auth.ensure_files()
    ca = ensure_tls(directory / "tls", host)
    err.print(f"Bridge password: {auth.credential_file(BRIDGE_ACCOUNT)}")
    err.print(f"Notifier password (alert states on MQTT): {auth.credential_file(NOTIFIER_ACCOUNT)}")
    err.print(f"Gateways trust this CA: {ca}")
