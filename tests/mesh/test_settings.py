"""Settings: CLI values over LIFEOPS_* environment variables over defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lifeops_mesh import registry
from mesh import mqtt_transport, plain_transport
from mesh.client import broker_transport
from mesh.errors import ConfigError
from mesh.retention import Retention
from mesh.settings import Settings, build_settings, parse_broker_url, tool_broker


def test_broker_url_forms() -> None:
    """mqtt://[user:pass@]host[:port], port 1883 by default, credentials URL-decoded."""
    u = parse_broker_url("mqtt://stats:p%40ss@broker:1884")
    assert (u.host, u.port, u.username, u.password) == ("broker", 1884, "stats", "p@ss")
    assert parse_broker_url("mqtt://localhost").port == 1883
    assert "p@ss" not in str(u)
    for bad in ("http://x", "mqtt://", "mqtt://h:notaport"):
        with pytest.raises(ConfigError):
            parse_broker_url(bad)


def test_environment_variables_and_flags() -> None:
    """LIFEOPS_BROKER_URL and LIFEOPS_DB_URL configure an agent; flags win over them."""
    env = {"LIFEOPS_BROKER_URL": "mqtt://stats:x@envhost:1", "LIFEOPS_DB_URL": "sqlite:///e.db"}
    s = build_settings("stats", env=env)
    assert s.broker.host == "envhost" and s.db_url == "sqlite:///e.db"
    s = build_settings("stats", broker_url="mqtt://flaghost", db_url="sqlite:///f.db", env=env)
    assert s.broker.host == "flaghost" and s.db_url == "sqlite:///f.db"
    s = build_settings("stats", broker_url="mqtt://h", data_dir="/tmp/d", env={})
    assert s.db_url == "sqlite:////tmp/d/stats.db"
    assert s.client_id == "lifeops-mesh-stats-0"
    with pytest.raises(ConfigError, match="LIFEOPS_BROKER_URL"):
        build_settings("stats", env={})
    with pytest.raises(ConfigError, match="unknown agent"):
        registry.build(build_settings("nope", broker_url="mqtt://h", env={}))
    assert build_settings("stats", broker_url="mqtts://h", env={}).broker.port == 8883


def test_password_from_credentials_file(tmp_path: Path) -> None:
    """LIFEOPS_CREDENTIALS_FILE fills the password of a URL that names only the user."""
    creds = tmp_path / "credentials.toml"
    creds.write_text('[users]\nstats = "s3cret"\n')
    env = {
        "LIFEOPS_BROKER_URL": "mqtt://stats@mosquitto:1883",
        "LIFEOPS_CREDENTIALS_FILE": str(creds),
    }
    assert build_settings("stats", env=env).broker.password == "s3cret"
    with pytest.raises(ConfigError, match="no password for broker user 'lifeops'"):
        build_settings("lifeops", env={**env, "LIFEOPS_BROKER_URL": "mqtt://lifeops@m:1883"})


def test_each_setting_is_decoded_once_with_its_own_default() -> None:
    """Unset variables leave the fields' own defaults; set ones land in the typed settings
    (the keyless window beside the batch settings, the retention windows in `retention`)."""
    default = build_settings("stats", broker_url="mqtt://h", env={})
    assert default == Settings(
        agent="stats", broker=parse_broker_url("mqtt://h"), db_url=default.db_url
    )
    assert default.keyless_window_s == 600.0 and default.retention == Retention()
    env = {
        "LIFEOPS_KEYLESS_WINDOW_S": "1.5",
        "LIFEOPS_SESSION_EXPIRY": "60",
        "LIFEOPS_METRICS_PORT": "9181",
        "LIFEOPS_DLQ_PAYLOAD_CAP": "1024",
        "LIFEOPS_DEDUP_WINDOW_DAYS": "3",
        "LIFEOPS_KEEP_DELIVERED_DAYS": "0.5",
        "LIFEOPS_KEEP_DEAD_LETTERS_DAYS": "7",
        "LIFEOPS_MAX_DEAD_LETTERS": "0",
        "LIFEOPS_MAX_DEAD_LETTER_BYTES": "4096",
        "LIFEOPS_LOG_LEVEL": "debug",
    }
    s = _stats(env)
    assert (s.keyless_window_s, s.session_expiry_s, s.metrics_port, s.dlq_cap) == (
        1.5, 60, 9181, 1024
    )  # fmt: skip
    assert s.retention == Retention(
        dedup_days=3, delivered_days=0.5, dead_letter_days=7, max_dead_letters=0,
        max_dead_letter_bytes=4096,
    )  # fmt: skip
    assert s.log_level == "debug"
    # a keyless window of 0 is one (every identical keyless message counts)
    assert _stats({"LIFEOPS_KEYLESS_WINDOW_S": "0"}).keyless_window_s == 0.0
    # a session expiry of 0 (or none) is the default: 7 days, 2 s in a share group
    zero = {"LIFEOPS_SESSION_EXPIRY": "0"}
    assert _stats(zero).session_expiry_s == 604800
    assert _stats(zero, share_group="g").session_expiry_s == 2
    # the flag wins over the variable
    assert _stats(env, metrics_port=0).metrics_port == 0


def _stats(env: dict[str, str], **flags: Any) -> Settings:
    return build_settings("stats", broker_url="mqtt://h", env=env, **flags)


@pytest.mark.parametrize(
    ("name", "value", "expects"),
    [
        ("LIFEOPS_SESSION_EXPIRY", "a week", "a session expiry in whole seconds"),
        ("LIFEOPS_SESSION_EXPIRY", "-1", "a session expiry in whole seconds"),
        ("LIFEOPS_METRICS_PORT", "http", "a port number, 0-65535 (0: any free port)"),
        ("LIFEOPS_METRICS_PORT", "70000", "a port number, 0-65535 (0: any free port)"),
        ("LIFEOPS_DLQ_PAYLOAD_CAP", "256k", "a size in bytes"),
        ("LIFEOPS_MAX_DEAD_LETTERS", "1e4", "a number of dead letters"),
        ("LIFEOPS_MAX_DEAD_LETTER_BYTES", "64MiB", "a size in bytes"),
        ("LIFEOPS_DEDUP_WINDOW_DAYS", "two weeks", "a number of days"),
        ("LIFEOPS_KEEP_DELIVERED_DAYS", "-2", "a number of days"),
        ("LIFEOPS_KEEP_DEAD_LETTERS_DAYS", "inf", "a number of days"),
        ("LIFEOPS_KEYLESS_WINDOW_S", "10m", "a number of seconds"),
        ("LIFEOPS_KEYLESS_WINDOW_S", "nan", "a number of seconds"),
        ("LIFEOPS_LOG_LEVEL", "LOUD", "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ],
)
def test_a_bad_setting_names_its_variable_and_what_it_expects(
    name: str, value: str, expects: str
) -> None:
    """Each parse error says which variable, the value it got, and what it expects (not one
    "expected a port number" for a byte cap and a session expiry alike)."""
    with pytest.raises(ConfigError) as err:
        _stats({name: value})
    assert str(err.value) == f"{name}={value!r}: expected {expects}"


def test_tools_and_agents_build_their_connection_one_way() -> None:
    """One function turns a broker URL into a transport (`broker_transport`: an agent's
    durable session and a tool's clean one differ only in session expiry); a tool's mqtts://
    takes the CA file from LIFEOPS_BROKER_CA_FILE as an agent's does, both read by
    mesh.settings (tests/mesh/test_tls.py connects both over TLS)."""
    env = {"LIFEOPS_BROKER_CA_FILE": "/ca.pem"}
    agent = build_settings("stats", broker_url="mqtts://stats:pw@broker:8884", env=env)
    assert agent.broker.ca_file == "/ca.pem"
    tool = tool_broker("mqtts://stats:pw@broker:8884", env=env)
    assert tool == agent.broker
    assert tool_broker("mqtts://b", ca_file="/x.pem", env=env).ca_file == "/x.pem"
    assert tool_broker("mqtt://b", env=env).ca_file is None
    plain = build_settings("stats", broker_url="mqtt://stats:pw@h:1884", instance="i", env={})
    t = mqtt_transport(plain)
    assert (t.client_id, t.url) == ("lifeops-mesh-stats-i", "mqtt://h:1884")
    t = broker_transport(plain.broker, client_id="c")
    assert (t.client_id, t.url) == ("c", "mqtt://h:1884")
    t = plain_transport("mqtt://tester:pw@h:1885", prefix="x")
    assert t.client_id.startswith("x-") and t.url == "mqtt://h:1885"
