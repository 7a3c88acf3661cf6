"""Settings decoded once from CLI flags and an injected environment mapping.

`Settings` holds what the runtime needs to run any agent. An agent's own options (a rules file,
a time zone, ...) are read by the agent from `settings.env`, the environment it was started
with, into a typed Struct of its own; the CLI turns its agent flags into those `LIFEOPS_*`
variables, so flags and environment mean the same everywhere.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

import msgspec

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
    batch_max: int = 512
    session_expiry_s: int = DURABLE_SESSION_EXPIRY_S
    # Fault injection for crash tests: "exit_after_commit:N" ends the process (exit code 137)
    # right after the N-th group commit, before any acknowledgement or reply goes out.
    failpoint: str | None = None
    # Refuse to start when another live process runs this instance (same client id).
    single_instance: bool = True
    # How long the runtime's tables keep what they no longer need (mesh.retention).
    retention: Retention = Retention()
    # Dead letters keep at most this many bytes of a payload in the database.
    dlq_cap: int = 262_144
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
    """CLI values win over environment variables (LIFEOPS_*), which win over defaults."""
    env = dict(os.environ if env is None else env)
    data = Path(data_dir or env.get("LIFEOPS_DATA_DIR", "data"))
    broker = broker_url or env.get("LIFEOPS_BROKER_URL")
    if not broker:
        raise ConfigError(
            "no broker: pass --broker mqtt://user:pass@host:port or set LIFEOPS_BROKER_URL"
        )
    db = db_url or env.get("LIFEOPS_DB_URL") or f"sqlite:///{data / (agent + '.db')}"
    parsed_broker = parse_broker_url(broker, ca_file=env.get("LIFEOPS_BROKER_CA_FILE"))
    creds_file = env.get("LIFEOPS_CREDENTIALS_FILE")
    group = share_group or env.get("LIFEOPS_SHARE_GROUP") or None
    # A member of a shared subscription keeps a short session: should it crash, the broker
    # stops queueing its share of the group's messages once the session expires.
    expiry = _int_or_none(env.get("LIFEOPS_SESSION_EXPIRY")) or (
        SHARED_SESSION_EXPIRY_S if group else DURABLE_SESSION_EXPIRY_S
    )
    if parsed_broker.username and parsed_broker.password is None and creds_file:
        parsed_broker = msgspec.structs.replace(
            parsed_broker, password=password_from_files(parsed_broker.username, creds_file)
        )
    return Settings(
        agent=agent,
        broker=parsed_broker,
        db_url=db,
        instance=instance or env.get("LIFEOPS_INSTANCE") or "0",
        share_group=group,
        session_expiry_s=expiry,
        data_dir=data,
        log_level=env.get("LIFEOPS_LOG_LEVEL", "INFO"),
        failpoint=env.get("LIFEOPS_FAILPOINT") or None,
        metrics_port=metrics_port
        if metrics_port is not None
        else _int_or_none(env.get("LIFEOPS_METRICS_PORT")),
        metrics_bind=env.get("LIFEOPS_METRICS_BIND", "127.0.0.1"),
        dlq_cap=_int_or_none(env.get("LIFEOPS_DLQ_PAYLOAD_CAP")) or 262_144,
        retention=_retention(env),
        env={k: v for k, v in env.items() if k.startswith("LIFEOPS_")},
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


def _retention(env: Mapping[str, str]) -> Retention:
    """LIFEOPS_DEDUP_WINDOW_DAYS, LIFEOPS_KEEP_DELIVERED_DAYS, LIFEOPS_KEEP_DEAD_LETTERS_DAYS,
    LIFEOPS_MAX_DEAD_LETTERS, LIFEOPS_MAX_DEAD_LETTER_BYTES, LIFEOPS_KEYLESS_WINDOW_S (defaults
    in mesh.retention)."""
    base = Retention()
    values = {
        "dedup_days": env.get("LIFEOPS_DEDUP_WINDOW_DAYS"),
        "delivered_days": env.get("LIFEOPS_KEEP_DELIVERED_DAYS"),
        "dead_letter_days": env.get("LIFEOPS_KEEP_DEAD_LETTERS_DAYS"),
    }
    try:
        days = {k: float(v) for k, v in values.items() if v}
        if env.get("LIFEOPS_KEYLESS_WINDOW_S"):
            days["keyless_s"] = float(env["LIFEOPS_KEYLESS_WINDOW_S"])
    except ValueError as exc:
        raise ConfigError(f"retention windows must be numbers: {exc}") from exc
    cap = _int_or_none(env.get("LIFEOPS_MAX_DEAD_LETTERS"))
    max_bytes = _int_or_none(env.get("LIFEOPS_MAX_DEAD_LETTER_BYTES"))
    caps = {"max_dead_letters": cap, "max_dead_letter_bytes": max_bytes}
    return msgspec.structs.replace(base, **days, **{k: v for k, v in caps.items() if v is not None})


def _int_or_none(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise ConfigError(f"expected a port number, got {value!r}") from exc


def new_password() -> str:
    return secrets.token_urlsafe(24)
