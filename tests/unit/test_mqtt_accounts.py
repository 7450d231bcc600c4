"""MQTT accounts (iotmon/mqtt_auth.py) and the ingest rule for gateway-assigned sensors,
without a broker.  The broker's side is in tests/integration/test_mqtt_auth.py."""

from __future__ import annotations

import base64
import hashlib
import stat
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotmon.mqtt_auth import AuthDir, AuthError, check_name, gateway_topics, hash_password
from iotmon.settings import MqttSettings
from schemas.deadletters import DeadLetterReason
from schemas.master import Location, Sensor, SensorRecord
from stream_apps.ingest.validate import Accepted, Limits, Rejection, validate_payload

pytestmark = pytest.mark.unit


def test_the_hash_is_mosquittos_pbkdf2_sha512_format() -> None:
    # A line written by mosquitto_passwd 2.0 for the password "secret-pass".
    line = (
        "$7$101$JE/jQmTENWudNwUK$qN/YjUgKgX3o6tlzq5ruNNtP7f76bKzhh6BsTKKkmA1FCSgubBTsCtoDmVg2ckX"
        "WuWlnWD650Tkqw/D4OuIe6Q=="
    )
    salt = base64.b64decode(line.split("$")[3])
    assert hash_password("secret-pass", salt=salt) == line
    assert hash_password("other", salt=salt) != line
    # A fresh salt each time.
    assert hash_password("secret-pass") != hash_password("secret-pass")
    digest = base64.b64decode(hash_password("x").split("$")[4])
    assert len(digest) == hashlib.sha512().digest_size


@given(st.text(min_size=1, max_size=80))
def test_only_names_that_cannot_change_the_acl_are_accepted(name: str) -> None:
    try:
        check_name(name)
    except AuthError:
        return
    assert not set(name) & set("/+#:\n\r\t \x00$")
    assert len(name) <= 64


@settings(max_examples=50)
@given(
    st.lists(
        st.text(alphabet="abcXYZ019_.-", min_size=1, max_size=12).filter(lambda s: s[0].isalnum()),
        min_size=1,
        max_size=6,
        unique=True,
    )
)
def test_each_gateway_may_write_only_topics_that_name_it(names: list[str]) -> None:
    mqtt = MqttSettings(topic_prefix="plant1/")
    for name in names:
        topics = gateway_topics(mqtt, name)
        assert topics == [f"plant1/gateways/{name}/sensors/+/readings"]
        # No other gateway's topic filter covers this one.
        for other in names:
            if other != name:
                assert all(f"/{other}/" not in t for t in topics)


def test_a_layout_without_gateway_levels_cannot_tell_gateways_apart() -> None:
    with pytest.raises(AuthError, match=r"\{gateway\}"):
        gateway_topics(MqttSettings(topics=["sensors/{sensor_id}/readings"]), "gw1")


def test_the_files_are_rendered_from_the_accounts_and_private(tmp_path: Path) -> None:
    auth = AuthDir(tmp_path / "auth")
    password = auth.add("gw1", "gateway", write=["gateways/gw1/sensors/+/readings"])
    auth.add_service("iotmon-bridge", write=[], read=["#"])
    with pytest.raises(AuthError, match="exists"):
        auth.add("gw1", "gateway", write=["x"])
    acl = (tmp_path / "auth" / "acl").read_text()
    assert "user gw1\ntopic write gateways/gw1/sensors/+/readings\n" in acl
    assert "user iotmon-bridge\ntopic read #\n" in acl
    passwd = dict(
        line.split(":", 1) for line in (tmp_path / "auth" / "passwd").read_text().splitlines()
    )
    salt = base64.b64decode(passwd["gw1"].split("$")[3])
    assert hash_password(password, salt=salt) == passwd["gw1"]
    for name in ("passwd", "acl", "accounts.json", "credentials/iotmon-bridge"):
        mode = stat.S_IMODE((tmp_path / "auth" / name).stat().st_mode)
        assert mode == 0o600, name
    # The bridge's password is created once and kept.
    assert auth.add_service("iotmon-bridge", write=[], read=["#"]) == (
        auth.credential_file("iotmon-bridge").read_text().strip()
    )
    auth.revoke("gw1")
    assert "gw1" not in (tmp_path / "auth" / "passwd").read_text()
    assert "gw1" not in (tmp_path / "auth" / "acl").read_text()
    with pytest.raises(AuthError):
        auth.revoke("gw1")


@pytest.mark.parametrize("topic", ["a/b#", "a/+b/c", "a/#/c", "", "a\nuser admin"])
def test_a_topic_filter_that_could_widen_or_inject_is_refused(tmp_path: Path, topic: str) -> None:
    with pytest.raises(AuthError):
        AuthDir(tmp_path).add("gw1", "gateway", write=[topic])


NOW = datetime(2026, 7, 1, 3, 0, tzinfo=UTC)


def _validate(assigned: str | None, came_from: str | None) -> Accepted | Rejection:
    record = SensorRecord(
        sensor=Sensor(sensor_id="S-1", loc_id="A001", gateway=assigned),
        location=Location(loc_id="A001", factory="F"),
        updated_at=NOW,
    )
    doc = {
        "sensor_id": "S-1",
        "capture_dt": "2026-07-01T02:59:00Z",
        "temperature": 20,
        "humidity": 50,
    }
    [(result, _)] = validate_payload(
        orjson.dumps(doc),
        key_sensor_id="S-1",
        lookup={"S-1": record}.get,
        limits=Limits(),
        now=NOW,
        source="mqtt",
        received_at=NOW,
        gateway=came_from,
    )
    return result


gateway_names = st.none() | st.sampled_from(["gw-a", "gw-b", "GW-A", "gw-a ", ""])


@given(gateway_names, gateway_names)
def test_an_assigned_sensor_accepts_its_own_gateway_only(
    assigned: str | None, came_from: str | None
) -> None:
    if assigned in {"", "gw-a "}:
        return  # not a valid assignment (the schema refuses it)
    result = _validate(assigned, came_from)
    if assigned is None or came_from == assigned:
        assert isinstance(result, Accepted)
    else:
        assert isinstance(result, Rejection)
        assert result.reason is DeadLetterReason.WRONG_GATEWAY
        assert repr(assigned) in result.detail


def test_the_simulator_logs_in_as_a_gateway_never_as_the_bridge(tmp_path: Path) -> None:
    from iotmon.settings import Settings  # noqa: PLC0415
    from producers.simulate_cmd import gateway_login, mqtt_topic  # noqa: PLC0415

    bridge = Settings().mqtt.model_copy(update={"auth_dir": tmp_path})
    with pytest.raises(ValueError, match="gateway account"):
        gateway_login(bridge, None)
    named = gateway_login(bridge, "line-3")
    assert named.username == "line-3"
    assert named.password_file == tmp_path / "credentials" / "line-3"
    assert mqtt_topic(named, "S-1") == "gateways/line-3/sensors/S-1/readings"
    # A deployment names the account and mounts its password: kept as configured.
    mounted = bridge.model_copy(
        update={"username": "line-3", "password_file": Path("/run/secrets/mqtt-gateway")}
    )
    assert gateway_login(mounted, "line-3") is mounted
    assert gateway_login(mounted, None) is mounted


@pytest.mark.parametrize(
    ("topic", "refused"),
    [
        ("gateways/line-1/sensors/+/readings", False),  # its own
        ("gateways/line-1/#", False),
        ("plant/legacy/+", False),  # outside every gateway tree
        ("sensors/+/readings", False),  # the legacy pattern names no gateway
        ("gateways/+/sensors/+/readings", True),
        ("gateways/line-2/sensors/+/readings", True),
        ("gateways/#", True),
        ("+/line-2/sensors/x/readings", True),
        ("#", True),
    ],
)
def test_a_custom_topic_may_not_reach_other_gateways(topic: str, refused: bool) -> None:
    from iotmon.gateways_cmd import _refuse_foreign_topics  # noqa: PLC0415
    from iotmon.settings import Settings  # noqa: PLC0415

    settings = Settings()
    if refused:
        with pytest.raises(AuthError, match="other gateways"):
            _refuse_foreign_topics(settings, "line-1", [topic])
    else:
        _refuse_foreign_topics(settings, "line-1", [topic])


@pytest.mark.parametrize(
    "extra",
    [["{gateway}/#"], ["{gateway}/+/sensors/{sensor_id}/readings"], ["site/{gateway}/#"]],
)
def test_patterns_that_let_one_gateway_pass_for_another_are_refused(extra: list[str]) -> None:
    with pytest.raises(AuthError, match="fixed level"):
        gateway_topics(MqttSettings(extra_topics=extra), "line-1")


def test_an_account_named_like_a_fixed_level_is_refused() -> None:
    with pytest.raises(AuthError, match="fixed level"):
        gateway_topics(MqttSettings(), "gateways")


def test_a_damaged_accounts_file_is_refused_not_rendered(tmp_path: Path) -> None:
    auth = AuthDir(tmp_path)
    auth.add("gw1", "gateway", write=["gateways/gw1/sensors/+/readings"])
    doc = orjson.loads(auth.source.read_bytes())
    doc["gw1"]["write"] = ["gateways/gw1/#\nuser other\ntopic readwrite #"]
    auth.source.write_bytes(orjson.dumps(doc))
    with pytest.raises(AuthError):
        auth.add("gw2", "gateway", write=["gateways/gw2/sensors/+/readings"])
    assert "other" not in (tmp_path / "acl").read_text()
    auth.source.write_text("{not json")
    with pytest.raises(AuthError, match="not a valid accounts file"):
        auth.accounts()


def test_the_ca_key_may_be_kept_offline_between_certificates(tmp_path: Path) -> None:
    from iotmon.mqtt_auth import ensure_tls  # noqa: PLC0415

    tls = tmp_path / "tls"
    ca = ensure_tls(tls, ["mqtt.plant.example"])
    first_ca = ca.read_bytes()
    offline = tmp_path / "offline.key"
    (tls / "ca.key").rename(offline)
    assert ensure_tls(tls, ["mqtt.plant.example"]) == ca  # nothing to issue: no key needed
    with pytest.raises(AuthError, match=r"ca\.key"):
        ensure_tls(tls, ["mqtt.plant.example", "10.0.0.5"])
    assert ca.read_bytes() == first_ca  # never a new CA behind the gateways' back
    offline.rename(tls / "ca.key")
    ensure_tls(tls, ["mqtt.plant.example", "10.0.0.5"])
    assert ca.read_bytes() == first_ca
    assert "10.0.0.5" in (tls / "server.hosts").read_text()
