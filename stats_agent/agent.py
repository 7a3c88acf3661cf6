"""The Stats agent's route table (entry point `lifeops_mesh.agents: stats`)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from lifeops_contract import contract, user_registry
from mesh import Agent, AgentApp, Route, Settings, installation_key
from stats_agent.handlers import StatsHandlers, character_lock
from stats_agent.repository import EXISTING_USERS, MIGRATIONS
from stats_agent.rules import load_rules

log = logging.getLogger("stats_agent")


class StatsConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The Stats agent's own options (`run stats --rules FILE`, or LIFEOPS_RULES_FILE)."""

    rules_file: Path | None = None

    @classmethod
    def from_env(cls, env: dict[str, str]) -> StatsConfig:
        rules = env.get("LIFEOPS_RULES_FILE")
        return cls(rules_file=Path(rules) if rules else None)


def build(settings: Settings) -> AgentApp:
    config = StatsConfig.from_env(settings.env)
    handlers = StatsHandlers(load_rules(config.rules_file))
    return AgentApp(
        name="stats",
        contract=contract(),
        migrations=MIGRATIONS,
        components={user_registry.COMPONENT: user_registry.migrations(EXISTING_USERS)},
        routes=[
            Route.batched(
                "activities_log",
                handlers.log_activities,
                locks=character_lock,
            ),
            Route.batched(
                "activity_completed",
                handlers.activities_completed,
                locks=character_lock,
            ),
            Route.batched("oura_synced", handlers.oura_days, locks=character_lock),
            Route("character_get", handlers.character_get),
            Route("events_recent", handlers.events_recent),
        ],
        on_open=handlers_open(handlers),
        collect=collect,
    )


def handlers_open(handlers: StatsHandlers) -> Callable[[Agent], Awaitable[None]]:
    async def on_open(agent: Agent) -> None:
        handlers.key = await installation_key(agent.store, "stats_activity_ids")
        for refused, holder in await user_registry.install(agent.store, EXISTING_USERS):
            log.warning(
                "user %r was stored before as well as %r, one person's id spelled two ways: "
                "%r is refused from now on (its data stays)",
                refused, holder, refused,
            )  # fmt: skip

    return on_open


async def collect(agent: Agent) -> None:
    """The game's own gauges, read at scrape time (one indexed aggregate query)."""
    async with agent.store.read() as tx:
        row = await tx.fetchone("SELECT COUNT(*), COALESCE(SUM(total_xp), 0) FROM stats_characters")
    users, xp = row or (0, 0)
    agent.metrics.gauge("stats_users", "Characters known to Stats").set(int(users))
    agent.metrics.gauge("stats_xp_granted", "XP granted to all characters together").set(int(xp))
