"""The Stats agent's route table."""

from __future__ import annotations

from mesh.agent import Agent, AgentApp
from mesh.inbox import Route
from mesh.settings import Settings
from stats_agent.handlers import StatsHandlers, activity_identity, oura_identity
from stats_agent.repository import MIGRATIONS
from stats_agent.rules import load_rules


def build(settings: Settings) -> AgentApp:
    handlers = StatsHandlers(load_rules(settings.rules_file))
    return AgentApp(
        name="stats",
        migrations=MIGRATIONS,
        routes=[
            Route("activities_log", handlers.log_activity, dedup=activity_identity),
            Route("activity_completed", handlers.activity_completed, dedup=activity_identity),
            Route("oura_synced", handlers.oura_synced, dedup=oura_identity),
            Route("character_get", handlers.character_get),
        ],
        collect=collect,
    )


async def collect(agent: Agent) -> None:
    """The game's own gauges, read at scrape time (one indexed aggregate query)."""
    async with agent.store.transaction() as tx:
        row = await tx.fetchone("SELECT COUNT(*), COALESCE(SUM(total_xp), 0) FROM stats_characters")
    users, xp = row or (0, 0)
    agent.metrics.gauge("stats_users", "Characters known to Stats").set(int(users))
    agent.metrics.gauge("stats_xp_granted", "XP granted to all characters together").set(int(xp))
