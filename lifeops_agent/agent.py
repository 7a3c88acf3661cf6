"""The LifeOps agent's route table."""

from __future__ import annotations

import logging

from lifeops_agent.handlers import LifeOpsHandlers
from lifeops_agent.repository import MIGRATIONS
from lifeops_agent.timeline import load_timeline
from mesh.agent import Agent, AgentApp
from mesh.inbox import Route
from mesh.settings import Settings

log = logging.getLogger("lifeops_agent")


def build(settings: Settings) -> AgentApp:
    handlers = LifeOpsHandlers(load_timeline(settings.timeline_file), settings.timezone)

    async def on_start(agent: Agent) -> None:
        handlers.receipts = agent.receipts
        handlers.contract = agent.contract
        async with agent.store.transaction() as tx:
            changed = await handlers.refresh_states(tx)
        if changed:
            log.info("timeline changed: %d retained timelines restated", changed)
            agent.states.changed()

    return AgentApp(
        name="lifeops",
        migrations=MIGRATIONS,
        routes=[
            Route("timeline_complete", handlers.complete, after_commit=handlers.after_complete),
            Route("timeline_get", handlers.get),
            Route("user_settings", handlers.settings),
            Route("oura_import", handlers.oura_import),
        ],
        on_start=on_start,
        on_receipt=handlers.on_receipt,
        depends_on=("stats",),
        on_peer_status=handlers.peer_status,
    )
