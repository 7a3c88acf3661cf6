"""The LifeOps Mesh contract: topics.toml and every payload it names.

Agents, tools and tests take the contract from here; the runtime (`mesh`) knows none of it.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from lifeops_contract.schemas import SCHEMAS
from mesh import Contract

DISCOVERY_PREFIX = "homeassistant"  # Home Assistant's default MQTT discovery prefix


def contract_path() -> Path:
    """The packaged topics.toml (the repository's top-level topics.toml is the same file)."""
    return Path(str(resources.files(__package__) / "topics.toml"))


@functools.cache
def contract() -> Contract:
    """The LifeOps Mesh contract, loaded once."""
    return Contract.load(contract_path(), SCHEMAS)


def load(path: Path | str) -> Contract:
    """Another topics.toml, with this contract's payload schemas."""
    return Contract.load(path, SCHEMAS)


def with_discovery_prefix(base: Contract, prefix: str) -> Contract:
    """`base` with Home Assistant's discovery topics under `prefix` instead of homeassistant/."""
    return base.with_first_level(DISCOVERY_PREFIX, prefix)


__all__ = [
    "DISCOVERY_PREFIX",
    "SCHEMAS",
    "contract",
    "contract_path",
    "load",
    "with_discovery_prefix",
]
