"""Settings: CLI values over LIFEOPS_* environment variables over defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeops_mesh import registry
from mesh.errors import ConfigError
from mesh.settings import build_settings, parse_broker_url


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
