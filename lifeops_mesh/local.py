"""A local installation made by `lifeops-mesh up`: its data dir, broker port and accounts."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import IO
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec

from mesh import ConfigError
from mesh.broker.accounts import load_credentials
from mesh.broker.config import listener
from mesh.broker.process import local_host
from mesh.settings import parse_broker_url, password_from_files


class Installation(msgspec.Struct, frozen=True):
    data: Path
    port: int
    credentials: dict[str, str]
    host: str = "127.0.0.1"  # where this machine reaches the broker (`up --listen`)

    def broker_url(self, principal: str) -> str:
        if principal not in self.credentials:
            raise ConfigError(f"{self.data / 'broker'} has no account {principal!r}")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{principal}:{self.credentials[principal]}@{host}:{self.port}"

    def db_url(self, agent: str) -> str:
        return f"sqlite:///{self.data.resolve() / (agent + '.db')}"


def installation(data: str | Path | None) -> Installation:
    """The `up` installation in `data` (default ./data); ConfigError when there is none."""
    run_dir = Path(data or "data") / "broker"
    creds = load_credentials(run_dir)
    conf = run_dir / "mosquitto.conf"
    found = listener(conf) if conf.exists() else None
    if not creds or found is None:
        raise ConfigError(
            f"no broker given and no `lifeops-mesh up` state in {run_dir}: pass --broker "
            "mqtt://tester:PASSWORD@host:port or set LIFEOPS_TOOL_BROKER_URL (with compose: "
            "`docker compose --profile cli run --rm cli health`)"
        )
    port, bind = found
    return Installation(
        data=Path(data or "data"), port=port, credentials=creds, host=local_host(bind)
    )


def tool_broker_url(broker: str | None, data: str | None, principal: str = "tester") -> str:
    """The broker a tool talks to: --broker, LIFEOPS_TOOL_BROKER_URL, or the `up` broker in
    --data with the `principal` account. A given URL without a user is the `principal` account;
    one without a password takes it from LIFEOPS_CREDENTIALS_FILE (compose's `cli` service), so
    no password needs to be on a command line."""
    url = broker or os.environ.get("LIFEOPS_TOOL_BROKER_URL")
    if url:
        return with_credentials(url, principal, os.environ.get("LIFEOPS_CREDENTIALS_FILE"))
    return installation(data).broker_url(principal)


def with_credentials(url: str, principal: str, creds_file: str | None) -> str:
    """`url` with the user (`principal` when it names none) and that user's password from
    `creds_file` filled in; unchanged when it has a password or there is no file."""
    parsed = parse_broker_url(url)
    if parsed.password is not None or not creds_file:
        return url
    user = parsed.username or principal
    password = password_from_files(user, creds_file)
    parts = urlsplit(url)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


class DataDirLock:
    """`lifeops-mesh up` holds this for as long as it runs: a second `up` on the same data dir
    refuses at once instead of rewriting its broker files and taking over its agents."""

    def __init__(self, data: Path) -> None:
        self.path = data / ".lifeops-up.lock"
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            pid = fh.read().strip() or "?"
            fh.close()
            raise ConfigError(
                f"another `lifeops-mesh up` is running on {self.path.parent} (pid {pid}): "
                "stop it first, or use another --data"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def ensure_port_free(port: int, what: str, host: str = "127.0.0.1") -> None:
    """ConfigError in one line when something already listens on `port`."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        # SO_REUSEADDR as Mosquitto and our metrics server bind: connections of a previous run in
        # TIME_WAIT do not count as "in use" (on Linux a listener still does).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise ConfigError(
                f"port {port} ({what}) is in use: another `lifeops-mesh up` or service runs "
                "there (choose another with its flag)"
            ) from None
