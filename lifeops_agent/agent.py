"""The LifeOps agent's route table (entry point `lifeops_mesh.agents: lifeops`)."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from lifeops_agent.handlers import LifeOpsHandlers
from lifeops_agent.locks import user_locks
from lifeops_agent.oura_sync import OuraSync, OuraSyncConfig, tokens_for
from lifeops_agent.repository import EXISTING_USERS, MIGRATIONS
from lifeops_agent.timeline import load_timeline
from lifeops_contract import contract, user_registry
from lifeops_oura.oauth import OAuthConfig
from mesh import Agent, AgentApp, Route, Settings, installation_key

log = logging.getLogger("lifeops_agent")


class LifeOpsConfig(msgspec.Struct, frozen=True, kw_only=True):
    """LifeOps' own options (`run lifeops --timeline FILE --timezone ZONE`, or
    LIFEOPS_TIMELINE_FILE and LIFEOPS_TIMEZONE)."""

    timeline_file: Path | None = None
    timezone: str = "UTC"

    @classmethod
    def from_env(cls, env: dict[str, str]) -> LifeOpsConfig:
        timeline = env.get("LIFEOPS_TIMELINE_FILE")
        return cls(
            timeline_file=Path(timeline) if timeline else None,
            timezone=env.get("LIFEOPS_TIMEZONE") or "UTC",
        )


def build(settings: Settings) -> AgentApp:
    config = LifeOpsConfig.from_env(settings.env)
    handlers = LifeOpsHandlers(load_timeline(config.timeline_file), config.timezone)
    the_contract = contract()
    handlers.contract = the_contract
    oura_config = OuraSyncConfig.from_env(settings.env)
    oauth = OAuthConfig.from_env(settings.env)
    tokens = tokens_for(oura_config, settings.env, oauth=oauth is not None)
    oura = OuraSync(oura_config, tokens, oauth)

    async def on_open(agent: Agent) -> None:
        handlers.receipts = agent.receipts
        handlers.key = await installation_key(agent.store, "lifeops_completion_ids")
        for refused, holder in await user_registry.install(agent.store, EXISTING_USERS):
            log.warning(
                "user %r was stored before as well as %r, one person's id spelled two ways: "
                "%r is refused from now on (its data stays)",
                refused, holder, refused,
            )  # fmt: skip
        async with agent.store.transaction() as tx:
            n = await handlers.backfill_best_streaks(tx)
        if n:
            log.info("best streaks computed once for %d users and items", n)

    async def on_start(agent: Agent) -> None:
        async with agent.store.transaction() as tx:
            changed = await handlers.refresh_states(tx)
        if changed:
            log.info("timeline changed: %d retained timelines restated", changed)
            agent.states.changed()
        await oura.start(agent)

    async def on_stop(agent: Agent) -> None:
        await oura.stop()

    return AgentApp(
        name="lifeops",
        contract=the_contract,
        migrations=MIGRATIONS,
        components={user_registry.COMPONENT: user_registry.migrations(EXISTING_USERS)},
        routes=[
            Route.batched(
                "timeline_complete",
                handlers.complete,
                after_commit=handlers.after_complete,
                locks=user_locks,
            ),
            Route("timeline_get", handlers.get),
            Route("user_settings", handlers.settings, locks=user_locks),
            Route("oura_import", handlers.oura_import, locks=user_locks),
        ],
        on_open=on_open,
        on_start=on_start,
        on_stop=on_stop,
        checks=oura.checks,
        on_receipt=handlers.on_receipt,
        depends_on=("stats",),
        on_peer_status=handlers.peer_status,
    )
