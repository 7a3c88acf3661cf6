"""The LifeOps agent's route table."""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from lifeops_agent.handlers import LifeOpsHandlers
from lifeops_agent.repository import MIGRATIONS
from lifeops_agent.timeline import load_timeline
from mesh.agent import Agent, AgentApp
from mesh.inbox import Route
from mesh.receipts import ReceiptRecord
from mesh.settings import Settings

log = logging.getLogger("lifeops_agent")


def build(settings: Settings) -> AgentApp:
    handlers = LifeOpsHandlers(load_timeline(settings.timeline_file), settings.timezone)
    agent_ref: list[Agent] = []

    async def on_start(agent: Agent) -> None:
        handlers.receipts = agent.receipts
        agent_ref.append(agent)
        async with agent.store.transaction() as tx:
            changed = await handlers.refresh_states(tx)
        if changed:
            log.info("timeline changed: %d retained timelines restated", changed)
            agent.states.changed()

    async def after_receipt(rec: ReceiptRecord, reply: Any) -> None:
        """Stats answered: the retained timeline shows the XP is no longer pending."""
        if rec.topic_key != "activity_completed" or not agent_ref:
            return
        agent = agent_ref[0]
        user_id = _user_of(rec)
        if not user_id:
            return
        async with agent.store.transaction() as tx:
            state = await handlers.day_state(tx, user_id)
        await agent.publish("timeline_state", state, trace_id=rec.trace_id, user_id=user_id)

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
        after_receipt=after_receipt,
        depends_on=("stats",),
        on_peer_status=handlers.peer_status,
    )


class _User(msgspec.Struct):
    user_id: str


def _user_of(rec: ReceiptRecord) -> str | None:
    try:
        return msgspec.json.decode(rec.payload, type=_User).user_id
    except msgspec.DecodeError:
        return None
