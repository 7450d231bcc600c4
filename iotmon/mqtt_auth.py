"""Who may talk to Mosquitto: gateway and service accounts, their ACL, the TLS certificates.

One directory (``mqtt.auth_dir``) holds everything Mosquitto reads, rendered from one file:

``accounts.json``
    The source: each account's kind (``gateway``, ``service`` or ``reader``), the topics
    it may write and read, its password hash and when it was created.
``passwd``, ``acl``
    Mosquitto's password file (PBKDF2-SHA512, Mosquitto's ``$7$`` format) and ACL file,
    rewritten from ``accounts.json`` on every change.  Mosquitto reads both again on SIGHUP.
``tls/``
    A CA generated for this installation and the MQTT listener's certificate signed by it;
    gateways trust ``tls/ca.crt``.  The CA's key stays here (mode 0600).
``credentials/<name>``
    The password of a service account created here (the bridge's), mode 0600, read by the
    process that logs in with it.  A gateway's password is shown once and never stored.

A gateway may write only the topics that name it: every reading pattern with ``{gateway}``,
filled in with its name (``gateways/<name>/sensors/+/readings``).  So the gateway the bridge
reads from a topic is the account that published it.  Plain functions and one small class;
the CLI (``iotmon gateways``) and the local stack compose them.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
import secrets
import signal
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from iotmon.settings import BRIDGE_ACCOUNT, MqttSettings
from schemas.master import GATEWAY_PATTERN

__all__ = ["BRIDGE_ACCOUNT", "Account", "AuthDir", "AuthError", "ensure_tls", "gateway_topics"]

ACCOUNT_NAME = re.compile(GATEWAY_PATTERN)
_ITERATIONS = 101  # what mosquitto_passwd writes for $7$ (Mosquitto 2.0)


class AuthError(ValueError):
    """An account request that cannot be carried out; the message says why."""


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A line of Mosquitto's password file after the ``name:`` (PBKDF2-SHA512, 12-byte
    salt, the ``$7$`` format of ``mosquitto_passwd``)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _ITERATIONS)
    return f"$7${_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def new_password() -> str:
    return secrets.token_urlsafe(24)


def check_name(name: str) -> str:
    # No '/', '+', '#' (they would change the meaning of the ACL's topics) and no ':'
    # (the password file's separator).
    if not ACCOUNT_NAME.fullmatch(name):
        raise AuthError(
            f"account name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def gateway_topics(settings: MqttSettings, name: str) -> list[str]:
    """The topics gateway ``name`` may write: every reading pattern that names
    ``{gateway}``, filled in (``{sensor_id}`` becomes ``+``).

    AuthError for a layout in which one gateway's topics could be read as another's: a
    ``{gateway}`` pattern must start with a fixed level and have no ``+`` or ``#`` (else
    ``{gateway}/#`` lets account ``gateways`` write ``gateways/<other>/...``), and no
    account may be named like a fixed level of a pattern."""
    check_name(name)
    patterns = [*settings.topics, *settings.extra_topics]
    fixed = {
        level
        for p in patterns
        for level in p.split("/")
        if level not in ("+", "#", "{gateway}", "{sensor_id}")
    }
    if name in fixed:
        raise AuthError(f"account name {name!r} is a fixed level of a topic pattern; pick another")
    topics = []
    for pattern in patterns:
        levels = pattern.split("/")
        if "{gateway}" not in levels:
            continue
        if levels[0] in ("{gateway}", "{sensor_id}", "+", "#") or "+" in levels or "#" in levels:
            raise AuthError(
                f"topic pattern {pattern!r}: a pattern with {{gateway}} must start with a "
                "fixed level and have no '+' or '#', so that no gateway's topics can be read "
                "as another's"
            )
        levels = [
            name if level == "{gateway}" else "+" if level == "{sensor_id}" else level
            for level in pattern.split("/")
        ]
        topics.append(settings.topic_prefix + "/".join(levels))
    if not topics:
        raise AuthError(
            "no reading topic pattern names {gateway} (IOTMON_MQTT__TOPICS), so a gateway "
            "could not be told from another; give the gateway's topics with --topic"
        )
    return topics


@dataclass
class Account:
    name: str
    kind: Literal["gateway", "service", "reader"]
    password_hash: str
    write: list[str] = field(default_factory=list)
    read: list[str] = field(default_factory=list)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())


class AuthDir:
    """The accounts of one Mosquitto, kept in ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.source = path / "accounts.json"

    def accounts(self) -> dict[str, Account]:
        """The accounts, checked as strictly as when they were added: a hand-edited or
        damaged file is an AuthError, never lines written into the ACL."""
        if not self.source.exists():
            return {}
        try:
            doc = json.loads(self.source.read_text())
            accounts = {name: Account(**fields) for name, fields in doc.items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise AuthError(f"{self.source} is not a valid accounts file: {exc}") from None
        for name, account in accounts.items():
            check_name(name)
            if account.name != name or account.kind not in ("gateway", "service", "reader"):
                raise AuthError(f"{self.source}: account {name!r} is inconsistent")
            for topic in [*account.write, *account.read]:
                _check_topic(topic)
            if not re.fullmatch(
                r"\$7\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+", account.password_hash
            ):
                raise AuthError(f"{self.source}: account {name!r} has no valid password hash")
        return accounts

    def _save(self, accounts: dict[str, Account]) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        ordered = dict(sorted(accounts.items()))
        _write_private(
            self.source, json.dumps({n: asdict(a) for n, a in ordered.items()}, indent=2) + "\n"
        )
        _write_private(
            self.path / "passwd", "".join(f"{n}:{a.password_hash}\n" for n, a in ordered.items())
        )
        _write_private(self.path / "acl", render_acl(ordered.values()))

    def ensure_files(self) -> None:
        """Write the password and ACL files even with no account yet (Mosquitto needs them)."""
        if not (self.path / "passwd").exists() or not (self.path / "acl").exists():
            self._save(self.accounts())

    def add(
        self,
        name: str,
        kind: Literal["gateway", "service", "reader"],
        *,
        write: list[str] | None = None,
        read: list[str] | None = None,
        replace: bool = False,
        password: str | None = None,
    ) -> str:
        """Create (or with ``replace``, re-key) an account; returns its new password."""
        check_name(name)
        for topic in [*(write or []), *(read or [])]:
            _check_topic(topic)
        accounts = self.accounts()
        if name in accounts and not replace:
            raise AuthError(f"account {name!r} exists; revoke it first or use --replace")
        password = password or new_password()
        accounts[name] = Account(
            name, kind, hash_password(password), list(write or []), list(read or [])
        )
        self._save(accounts)
        return password

    def add_service(self, name: str, *, write: list[str], read: list[str]) -> str:
        """A service account whose password is kept in ``credentials/<name>``; created
        once, later calls return the stored password."""
        return self.ensure(name, "service", write=write, read=read)

    def ensure(
        self,
        name: str,
        kind: Literal["gateway", "service", "reader"],
        *,
        write: list[str],
        read: list[str] | None = None,
    ) -> str:
        """The account with these rights and a password kept in ``credentials/<name>``:
        left as it is when it already has both (its password never changes under a client
        that uses it), else created or re-keyed."""
        stored = self.credential_file(name)
        account = self.accounts().get(name)
        if (
            account is not None
            and stored.exists()
            and account.kind == kind
            and account.write == write
            and account.read == list(read or [])
        ):
            return stored.read_text().strip()
        password = self.add(name, kind, write=write, read=read, replace=True)
        self.save_credential(name, password)
        return password

    def save_credential(self, name: str, password: str) -> None:
        (self.path / "credentials").mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(self.credential_file(name), password + "\n")

    def credential_file(self, name: str) -> Path:
        return self.path / "credentials" / name

    def revoke(self, name: str) -> None:
        accounts = self.accounts()
        if name not in accounts:
            raise AuthError(f"no account {name!r}")
        del accounts[name]
        self._save(accounts)
        self.credential_file(name).unlink(missing_ok=True)


def _check_topic(topic: str) -> None:
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or (
            "+" in level and level != "+"
        ):
            raise AuthError(f"topic {topic!r}: wildcards must fill a whole level")
    if not topic or "\n" in topic or "\x00" in topic:
        raise AuthError(f"topic {topic!r} is not a valid MQTT topic filter")


def render_acl(accounts: object) -> str:
    lines = ["# Written by `iotmon gateways` from accounts.json; edits here are overwritten.\n"]
    for account in accounts:  # type: ignore[attr-defined]
        lines.append(f"\nuser {account.name}\n")
        lines.extend(f"topic write {t}\n" for t in account.write)
        lines.extend(f"topic read {t}\n" for t in account.read)
    return "".join(lines)


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with a file only its owner can read."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def reload_mosquitto(pid: int) -> None:
    """Make Mosquitto read its password and ACL files again (SIGHUP)."""
    os.kill(pid, signal.SIGHUP)


def ensure_tls(directory: Path, hosts: list[str], *, days: int = 825) -> Path:
    """A CA and a server certificate for ``hosts`` under ``directory`` (created once;
    a new host in ``hosts`` re-issues the server certificate, which needs ``ca.key``: it
    may be kept offline in between).  Returns the CA file."""
    from cryptography import x509  # noqa: PLC0415 - only the stack and the CLI need it
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_crt, ca_key = directory / "ca.crt", directory / "ca.key"
    srv_crt, srv_key = directory / "server.crt", directory / "server.key"
    hosts_file = directory / "server.hosts"
    now = datetime.now(UTC)

    def pem_key(key: ec.EllipticCurvePrivateKey) -> str:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    if not ca_crt.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "iotmon MQTT CA")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        _write_private(ca_key, pem_key(key))
        ca_crt.write_text(cert.public_bytes(serialization.Encoding.PEM).decode())
        srv_crt.unlink(missing_ok=True)

    wanted = sorted(set(hosts))
    if (
        srv_crt.exists()
        and srv_key.exists()
        and hosts_file.exists()
        and hosts_file.read_text().split() == wanted
    ):
        return ca_crt
    if not ca_key.exists():
        # The operator keeps the CA's key offline; it is needed only here.
        raise AuthError(
            f"{ca_key} is needed to issue the listener's certificate for {', '.join(wanted)}:"
            " put the CA's key back for this command (remove ca.crt too for a new CA)"
        )
    ca_cert = x509.load_pem_x509_certificate(ca_crt.read_bytes())
    ca_private = serialization.load_pem_private_key(ca_key.read_bytes(), None)
    assert isinstance(ca_private, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for host in wanted:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, wanted[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_private, hashes.SHA256())
    )
    # Mosquitto in a container runs as its own user: the key must be readable by the
    # process that mounts it; the local stack runs Mosquitto as the file's owner.
    _write_private(srv_key, pem_key(key))
    srv_crt.write_text(cert.public_bytes(serialization.Encoding.PEM).decode())
    hosts_file.write_text(" ".join(wanted) + "\n")
    return ca_crt
