"""A local installation made by `lifeops-mesh up`: its data dir, broker port and accounts."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from mesh import ConfigError
from mesh.broker.accounts import load_credentials
from mesh.broker.config import listener_port


class Installation(msgspec.Struct, frozen=True):
    data: Path
    port: int
    credentials: dict[str, str]

    def broker_url(self, principal: str) -> str:
        if principal not in self.credentials:
            raise ConfigError(f"{self.data / 'broker'} has no account {principal!r}")
        return f"mqtt://{principal}:{self.credentials[principal]}@127.0.0.1:{self.port}"

    def db_url(self, agent: str) -> str:
        return f"sqlite:///{self.data.resolve() / (agent + '.db')}"


def installation(data: str | Path | None) -> Installation:
    """The `up` installation in `data` (default ./data); ConfigError when there is none."""
    run_dir = Path(data or "data") / "broker"
    creds = load_credentials(run_dir)
    conf = run_dir / "mosquitto.conf"
    port = listener_port(conf) if conf.exists() else None
    if not creds or port is None:
        raise ConfigError(
            f"no broker given and no `lifeops-mesh up` state in {run_dir}: pass --broker "
            "mqtt://tester:PASSWORD@host:port or set LIFEOPS_TOOL_BROKER_URL"
        )
    return Installation(data=Path(data or "data"), port=port, credentials=creds)


def tool_broker_url(broker: str | None, data: str | None, principal: str = "tester") -> str:
    """The broker a tool talks to: --broker, LIFEOPS_TOOL_BROKER_URL, or the `up` broker in
    --data with the `principal` account."""
    if broker:
        return broker
    if os.environ.get("LIFEOPS_TOOL_BROKER_URL"):
        return os.environ["LIFEOPS_TOOL_BROKER_URL"]
    return installation(data).broker_url(principal)
