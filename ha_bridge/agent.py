"""The Home Assistant bridge's route table (entry point `lifeops_mesh.agents: ha_bridge`)."""

from __future__ import annotations

from typing import Literal

import msgspec

from ha_bridge.bridge import Bridge
from ha_bridge.repository import EXISTING_USERS, MIGRATIONS
from lifeops_contract import (
    DISCOVERY_PREFIX,
    contract,
    user_registry,
    with_discovery_prefix,
)
from lifeops_contract.ids import distinct_user_ids
from mesh import AgentApp, ConfigError, Route, Settings


class BridgeConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The bridge's own options: Home Assistant's discovery prefix
    (LIFEOPS_HA_DISCOVERY_PREFIX) and users whose devices exist from the start
    (LIFEOPS_HA_USERS, comma-separated)."""

    discovery_prefix: str = DISCOVERY_PREFIX
    users: tuple[str, ...] = ()
    # "component": a config per entity (every HA version); "device": one per device (HA 2024.11+)
    discovery: Literal["component", "device"] = "component"

    @classmethod
    def from_env(cls, env: dict[str, str]) -> BridgeConfig:
        users = tuple(u.strip() for u in env.get("LIFEOPS_HA_USERS", "").split(",") if u.strip())
        discovery = env.get("LIFEOPS_HA_DISCOVERY") or "component"
        if discovery not in ("component", "device"):
            raise ConfigError(
                f"LIFEOPS_HA_DISCOVERY={discovery!r}: 'component' (a config per entity, every "
                "Home Assistant) or 'device' (one per device, Home Assistant 2024.11 and later)"
            )
        # Alice and alice would get the same entity ids.
        distinct_user_ids(users, "LIFEOPS_HA_USERS")
        return cls(
            discovery_prefix=env.get("LIFEOPS_HA_DISCOVERY_PREFIX") or DISCOVERY_PREFIX,
            users=users,
            discovery="device" if discovery == "device" else "component",
        )


def build(settings: Settings) -> AgentApp:
    config = BridgeConfig.from_env(settings.env)
    bridge_contract = with_discovery_prefix(contract(), config.discovery_prefix)
    bridge = Bridge(config.users, bridge_contract, device_discovery=config.discovery == "device")
    return AgentApp(
        name="ha_bridge",
        contract=bridge_contract,
        migrations=MIGRATIONS,
        components={user_registry.COMPONENT: user_registry.migrations(EXISTING_USERS)},
        routes=[
            Route("character_state", bridge.character_state),
            Route("timeline_state", bridge.timeline_state),
            Route("oura_status", bridge.oura_status),
            Route("levelup", bridge.levelup),
            Route("achievement", bridge.achievement),
            Route("ha_status", bridge.ha_status),
        ],
        on_open=bridge.open,
        on_start=bridge.start,
        on_stop=bridge.stop,
        depends_on=("stats", "lifeops"),
        on_peer_status=bridge.peer_status,
    )
