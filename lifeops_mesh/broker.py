"""The broker files that ship with LifeOps Mesh, and a local Mosquitto made from them.

`broker/mosquitto.conf` (the deployment config) and `broker/acl` (generated from topics.toml)
are packaged as `lifeops_mesh/data/`; in the repository those are the same files.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from lifeops_contract import contract as default_contract
from mesh import Contract
from mesh.broker.acl import generate_acl
from mesh.broker.process import MosquittoProcess


def data_file(name: str) -> Path:
    return Path(str(resources.files("lifeops_mesh") / "data" / name))


def config_file() -> Path:
    """The deployment mosquitto.conf."""
    return data_file("mosquitto.conf")


def acl_file() -> Path:
    """The committed ACL (what `lifeops-mesh broker acl` prints for the default contract)."""
    return data_file("acl")


def local_broker(
    run_dir: Path,
    *,
    port: int | None = None,
    contract: Contract | None = None,
    overrides: dict[str, str] | None = None,
    extra_acl: str = "",
    extra_accounts: tuple[str, ...] = (),
    extra_config: str = "",
    bind: str = "127.0.0.1",
) -> MosquittoProcess:
    """A Mosquitto on `bind` (default 127.0.0.1) from the packaged config, state under
    `run_dir`; with another `contract` (e.g. a discovery prefix) its ACL is generated from it."""
    base = default_contract()
    acl = acl_file().read_text(encoding="utf-8") if contract in (None, base) else None
    chosen = contract or base
    return MosquittoProcess(
        run_dir,
        config=config_file(),
        acl=acl if acl is not None else generate_acl(chosen),
        principals=chosen.meta.principals,
        port=port,
        overrides=overrides,
        extra_acl=extra_acl,
        extra_accounts=extra_accounts,
        extra_config=extra_config,
        bind=bind,
    )
