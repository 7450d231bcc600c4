"""Bearer tokens: static tokens and HS256 JWTs, roles, open or protected reads."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.deps import issue_jwt
from iotmon.settings import ApiSettings, DatabaseSettings, KafkaSettings, Settings
from tests.api_support import api_settings

pytestmark = pytest.mark.integration

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
SUB = {"subscriber": "kim", "notify_type": "app", "notify_id": "device-1"}
URL = "/api/v1/subscriptions/"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def signed(claims: dict[str, object], secret: str = SECRET) -> str:
    token: str = jwt.encode({"exp": int(time.time()) + 600, **claims}, secret, algorithm="HS256")
    return token


@pytest.fixture
def settings(stack: Settings, kafka: KafkaSettings, db: DatabaseSettings) -> Settings:
    return api_settings(stack, kafka, db, jwt_secret=SecretStr(SECRET), jwt_issuer="iotmon-test")


def test_jwt_roles(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        operator = issue_jwt(settings, "park", "operator", 600)
        r = client.post(URL, json=SUB, headers=bearer(operator))
        assert r.status_code == 201, r.text
        viewer = issue_jwt(settings, "choi", "viewer", 600)
        denied = client.post(URL, json=SUB, headers=bearer(viewer))
        assert denied.status_code == 403 and "operator" in denied.json()["error"]["message"]
        # The highest of a `roles` list counts.
        many = signed({"sub": "han", "roles": ["viewer", "admin"], "iss": "iotmon-test"})
        assert client.post(URL, json=SUB, headers=bearer(many)).status_code == 201
        for token, status, word in (
            (signed({"sub": "x", "role": "admin", "iss": "iotmon-test"}, "wrong"), 401, "invalid"),
            (
                signed({"sub": "x", "role": "admin", "iss": "iotmon-test", "exp": 1}),
                401,
                "expired",
            ),
            (signed({"sub": "x", "role": "admin", "iss": "someone-else"}), 401, "invalid"),
            (signed({"sub": "x", "role": "root", "iss": "iotmon-test"}), 403, "role"),
            # Names the API gives or writes itself cannot come from a token.
            (
                signed({"sub": "token:admin", "role": "admin", "iss": "iotmon-test"}),
                401,
                "reserved",
            ),
            (signed({"sub": "kim (by x)", "role": "admin", "iss": "iotmon-test"}), 401, "reserved"),
            (
                jwt.encode({"sub": "x", "role": "admin", "iss": "iotmon-test"}, SECRET, "HS256"),
                401,
                "exp",
            ),
            (
                jwt.encode(
                    {"sub": "x", "role": "admin", "exp": int(time.time()) + 60},
                    SECRET,
                    "HS512",
                ),
                401,
                "invalid",
            ),
            ("a.b.c", 401, "invalid"),
            ("not-a-token", 401, "unknown"),
        ):
            r = client.post(URL, json=SUB, headers=bearer(token))
            assert r.status_code == status, (token, r.text)
            assert word in r.json()["error"]["message"], (token, r.text)
            if status == 401:
                assert r.headers["www-authenticate"] == "Bearer"
        # The JWT's subject is who acknowledged (see alerts tests for the static token).
        assert len(client.get(URL, headers=bearer("view")).json()) == 2


def test_static_tokens_and_protected_reads(settings: Settings) -> None:
    closed = settings.model_copy(
        update={"api": settings.api.model_copy(update={"open_reads": False})}
    )
    with TestClient(create_app(closed)) as client:
        assert client.get(URL).status_code == 401
        assert client.get("/api/v1/alerts/").status_code == 401
        assert client.get(URL, headers=bearer("view")).status_code == 200
        assert client.get(
            URL, headers=bearer(issue_jwt(closed, "a", "viewer", 60))
        ).status_code == (200)
        assert client.post(URL, json=SUB, headers=bearer("view")).status_code == 403
        assert client.post(URL, json=SUB, headers=bearer("op")).status_code == 201
        assert client.post(URL, json=SUB, headers={"Authorization": "Basic b3A6"}).status_code == (
            401
        )
        # Operations endpoints stay open for probes.
        assert client.get("/health").status_code == 200


def test_without_a_secret_jwts_are_refused(
    stack: Settings, kafka: KafkaSettings, db: DatabaseSettings
) -> None:
    with TestClient(create_app(api_settings(stack, kafka, db))) as client:
        token = signed({"sub": "x", "role": "admin"})
        r = client.post(URL, json=SUB, headers=bearer(token))
        assert r.status_code == 401


@pytest.mark.parametrize("secret", ["", "short", "x" * 31])
def test_a_short_jwt_secret_stops_the_api_with_a_clear_message(secret: str) -> None:
    """Refused at start-up, by name, without printing the value (it may be a secret)."""
    env = {**os.environ, "IOTMON_API__JWT_SECRET": secret}
    run = subprocess.run(
        [str(Path(sys.executable).with_name("iotmon")), "api"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert "IOTMON_API__JWT_SECRET" in run.stderr and "at least 32" in run.stderr
    assert "Traceback" not in run.stderr
    if secret:
        assert secret not in run.stderr
    with pytest.raises(ValueError, match="at least 32"):
        ApiSettings(jwt_secret=SecretStr(secret))
    assert ApiSettings(jwt_secret=SecretStr("y" * 32)).jwt_secret is not None
