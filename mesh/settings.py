"""Settings decoded once from CLI flags and an injected environment mapping.

`Settings` holds what the runtime needs to run any agent. An agent's own options (a rules file,
a time zone, ...) are read by the agent from `settings.env`, the environment it was started
with, into a typed Struct of its own; the CLI turns its agent flags into those `LIFEOPS_*`
variables, so flags and environment mean the same everywhere.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import msgspec

from mesh.dlq import DEFAULT_PAYLOAD_CAP
from mesh.errors import ConfigError
from mesh.retention import Retention

DEFAULT_PORTS = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883}
DURABLE_SESSION_EXPIRY_S = 7 * 24 * 3600
# A shared-subscription member that crashed strands what the broker queues to it until its
# session expires (Mosquitto and EMQX keep routing a share to it; docs/scaling.md). Mosquitto
# checks expiry once a second, so 2 s end it well within a request's 5 s timeout: the retry
# never lands in a dead member's queue. A member that loses the broker for longer resumes with
# a new session; what was in flight is sent again by its senders (receipts, retries).
SHARED_SESSION_EXPIRY_S = 2
CA_FILE_VARIABLE = "LIFEOPS_BROKER_CA_FILE"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class BrokerURL(msgspec.Struct, frozen=True):
    """A parsed broker URL: host, port, account and TLS (see `parse_broker_url`)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None  # for mqtts://: the CA that signed the broker's certificate

    def __str__(self) -> str:
        auth = f"{self.username}:***@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{auth}{self.host}:{self.port}"


def parse_broker_url(url: str, *, ca_file: str | None = None) -> BrokerURL:
    """mqtt://[user:pass@]host[:port] (port 1883) or mqtts://... (TLS, port 8883)."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise ConfigError(f"broker URL {url!r}: use mqtt://[user:pass@]host:port or mqtts://...")
    if not parts.hostname:
        raise ConfigError(f"broker URL {url!r} has no host")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError as exc:
        raise ConfigError(f"broker URL {url!r}: {exc}") from exc
    tls = parts.scheme in ("mqtts", "ssl")
    return BrokerURL(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
        ca_file=ca_file if tls else None,
    )


class Settings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """What the runtime needs to run any agent, decoded once (see `build_settings`)."""

    agent: str
    broker: BrokerURL
    db_url: str
    instance: str = "0"
    share_group: str | None = None
    data_dir: Path = Path("data")
    # Group commit (mesh.inbox): at most this many messages per transaction.
    batch_max: int = 512
    # A key derived from a keyless message (mesh.inbox.derived_key) stands for "the same
    # message" this long (LIFEOPS_KEYLESS_WINDOW_S); later, an identical keyless message that
    # is not a redelivery (no DUP flag) is a new one: the same command run again tomorrow
    # counts again.
    keyless_window_s: float = 600.0
    session_expiry_s: int = DURABLE_SESSION_EXPIRY_S
    # Fault injection for crash tests: "exit_after_commit:N" ends the process (exit code 137)
    # right after the N-th group commit, before any acknowledgement or reply goes out.
    failpoint: str | None = None
    # Refuse to start when another live process runs this instance (same client id).
    single_instance: bool = True
    # How long the runtime's tables keep what they no longer need (mesh.retention).
    retention: Retention = Retention()
    # Dead letters keep at most this many bytes of a payload in the database.
    dlq_cap: int = DEFAULT_PAYLOAD_CAP
    metrics_port: int | None = None  # None: no HTTP endpoint; 0: any free port
    metrics_bind: str = "127.0.0.1"
    log_level: str = "INFO"
    log_json: bool = True
    # The environment the agent was started with (LIFEOPS_* variables, CLI flags included):
    # each agent decodes its own options from it.
    env: dict[str, str] = {}

    @property
    def client_id(self) -> str:
        return f"lifeops-mesh-{self.agent}-{self.instance}"


def build_settings(
    agent: str,
    *,
    broker_url: str | None = None,
    db_url: str | None = None,
    data_dir: str | Path | None = None,
    instance: str | None = None,
    share_group: str | None = None,
    metrics_port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """CLI values win over environment variables (LIFEOPS_*), which win over defaults (the
    defaults are the fields' own: a variable that is not set passes nothing). A variable that
    does not parse is a ConfigError naming it and what it expects."""
    env = dict(os.environ if env is None else env)
    data = Path(data_dir or env.get("LIFEOPS_DATA_DIR", "data"))
    broker = broker_url or env.get("LIFEOPS_BROKER_URL")
    if not broker:
        raise ConfigError(
            "no broker: pass --broker mqtt://user:pass@host:port or set LIFEOPS_BROKER_URL"
        )
    group = share_group or env.get("LIFEOPS_SHARE_GROUP") or None
    given: dict[str, Any] = {
        "session_expiry_s": _session_expiry(env, group),
        "metrics_port": metrics_port if metrics_port is not None else _port(env),
        "metrics_bind": env.get("LIFEOPS_METRICS_BIND"),
        "log_level": _log_level(env),
        "failpoint": env.get("LIFEOPS_FAILPOINT") or None,
        # 0 or empty: the default, as ever
        "dlq_cap": _whole(env, "LIFEOPS_DLQ_PAYLOAD_CAP", "a size in bytes") or None,
        "keyless_window_s": _number(env, "LIFEOPS_KEYLESS_WINDOW_S", "a number of seconds"),
    }
    return Settings(
        agent=agent,
        broker=_broker(broker, env),
        db_url=db_url or env.get("LIFEOPS_DB_URL") or f"sqlite:///{data / (agent + '.db')}",
        instance=instance or env.get("LIFEOPS_INSTANCE") or "0",
        share_group=group,
        data_dir=data,
        retention=_retention(env),
        env={k: v for k, v in env.items() if k.startswith("LIFEOPS_")},
        **{k: v for k, v in given.items() if v is not None},
    )


def password_from_files(user: str, files: str) -> str:
    """`user`'s password from LIFEOPS_CREDENTIALS_FILE: one credentials.toml ([users] name =
    "...") or several separated by os.pathsep (a tool container mounts one file per account)."""
    for name in (f for f in files.split(os.pathsep) if f):
        path = Path(name)
        try:
            users = tomllib.loads(path.read_text(encoding="utf-8")).get("users", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"LIFEOPS_CREDENTIALS_FILE {path}: {exc}") from exc
        if user in users:
            return str(users[user])
    raise ConfigError(f"{files} has no password for broker user {user!r}")


def _broker(url: str, env: Mapping[str, str]) -> BrokerURL:
    """`url` parsed (for mqtts:// with LIFEOPS_BROKER_CA_FILE), and when it names a user
    without a password, the password from LIFEOPS_CREDENTIALS_FILE."""
    parsed = parse_broker_url(url, ca_file=env.get(CA_FILE_VARIABLE))
    creds_file = env.get("LIFEOPS_CREDENTIALS_FILE")
    if parsed.username and parsed.password is None and creds_file:
        password = password_from_files(parsed.username, creds_file)
        return msgspec.structs.replace(parsed, password=password)
    return parsed


def tool_broker(
    url: str, *, ca_file: str | None = None, env: Mapping[str, str] | None = None
) -> BrokerURL:
    """The broker of a tool or script (no Settings): `url` parsed; for mqtts:// the broker's
    certificate is checked against `ca_file`, else LIFEOPS_BROKER_CA_FILE of `env` (default:
    the process environment), else the system's CAs."""
    env = os.environ if env is None else env
    return parse_broker_url(url, ca_file=ca_file or env.get(CA_FILE_VARIABLE))


def _session_expiry(env: Mapping[str, str], group: str | None) -> int:
    """LIFEOPS_SESSION_EXPIRY, else (empty or 0) 7 days, or 2 s for a member of a shared
    subscription: should it crash, the broker stops queueing its share of the group's
    messages once the session expires."""
    given = _whole(env, "LIFEOPS_SESSION_EXPIRY", "a session expiry in whole seconds")
    return given or (SHARED_SESSION_EXPIRY_S if group else DURABLE_SESSION_EXPIRY_S)


def _port(env: Mapping[str, str]) -> int | None:
    return _whole(
        env, "LIFEOPS_METRICS_PORT", "a port number, 0-65535 (0: any free port)", most=65535
    )


def _log_level(env: Mapping[str, str]) -> str | None:
    level = env.get("LIFEOPS_LOG_LEVEL")
    if level and level.upper() not in logging.getLevelNamesMapping():
        raise ConfigError(f"LIFEOPS_LOG_LEVEL={level!r}: expected one of {', '.join(LOG_LEVELS)}")
    return level or None


def _retention(env: Mapping[str, str]) -> Retention:
    """LIFEOPS_DEDUP_WINDOW_DAYS, LIFEOPS_KEEP_DELIVERED_DAYS, LIFEOPS_KEEP_DEAD_LETTERS_DAYS,
    LIFEOPS_MAX_DEAD_LETTERS, LIFEOPS_MAX_DEAD_LETTER_BYTES (defaults in mesh.retention)."""
    given: dict[str, Any] = {
        "dedup_days": _number(env, "LIFEOPS_DEDUP_WINDOW_DAYS", "a number of days"),
        "delivered_days": _number(env, "LIFEOPS_KEEP_DELIVERED_DAYS", "a number of days"),
        "dead_letter_days": _number(env, "LIFEOPS_KEEP_DEAD_LETTERS_DAYS", "a number of days"),
        "max_dead_letters": _whole(env, "LIFEOPS_MAX_DEAD_LETTERS", "a number of dead letters"),
        "max_dead_letter_bytes": _whole(env, "LIFEOPS_MAX_DEAD_LETTER_BYTES", "a size in bytes"),
    }
    return Retention(**{k: v for k, v in given.items() if v is not None})


def _whole(
    env: Mapping[str, str], name: str, expects: str, *, most: int | None = None
) -> int | None:
    """The whole number (0 or more, at most `most`) in variable `name`; None when unset."""
    raw = env.get(name)
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0 or (most is not None and value > most):
        raise ConfigError(f"{name}={raw!r}: expected {expects}")
    return value


def _number(env: Mapping[str, str], name: str, expects: str) -> float | None:
    """The number (0 or more) in variable `name`; None when unset."""
    raw = env.get(name)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (0 <= value < math.inf):
        raise ConfigError(f"{name}={raw!r}: expected {expects}")
    return value


def new_password() -> str:
    return secrets.token_urlsafe(24)
