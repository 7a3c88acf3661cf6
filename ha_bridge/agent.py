"""The Home Assistant bridge's route table."""

from __future__ import annotations

from ha_bridge.bridge import Bridge
from ha_bridge.repository import MIGRATIONS
from mesh.agent import AgentApp
from mesh.contract import default_contract
from mesh.inbox import Route
from mesh.settings import Settings


def build(settings: Settings) -> AgentApp:
    contract = default_contract().with_discovery_prefix(settings.ha_discovery_prefix)
    bridge = Bridge(settings, contract)
    return AgentApp(
        name="ha_bridge",
        migrations=MIGRATIONS,
        routes=[
            Route("character_state", bridge.character_state),
            Route("timeline_state", bridge.timeline_state),
            Route("ha_status", bridge.ha_status),
        ],
        on_start=bridge.start,
        on_stop=bridge.stop,
        depends_on=("stats", "lifeops"),
        on_peer_status=bridge.peer_status,
        contract=contract,
    )
