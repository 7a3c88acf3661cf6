"""A deadlock or serialization failure between agents sharing a database is retried by the
runtime until it goes through: never a dead letter, never an error reply."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from lifeops_contract import contract
from lifeops_contract.schemas import ActivityLogReply, ActivityLogRequest
from mesh import AgentApp, Context, Route
from mesh.testing.brokers import InMemoryBroker, client_for
from tests.conftest import StartApp


async def test_a_conflict_is_retried_past_the_give_up_of_other_failures(
    start_app: StartApp, tmp_path: Path
) -> None:
    """The handler's transaction loses to another one six times in a row (the committer gives
    up on other failures after five): the message still commits once, with no dead letter."""
    lost: list[type[Exception]] = []
    kinds = [asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError]

    async def log(ctx: Context, req: ActivityLogRequest) -> ActivityLogReply:
        if len(lost) < 6:
            kind = kinds[len(lost) % 2]
            lost.append(kind)
            raise kind("could not serialize access")
        return ActivityLogReply(activity_id="a1", xp_granted={"INT": 30}, message="ok")

    app = AgentApp(
        name="stats",
        contract=contract(),
        routes=[Route("activities_log", log, dedup=lambda r: f"activity:{r.source_ref}")],
    )
    twin = InMemoryBroker()
    async with (
        start_app(app, twin, f"sqlite:///{tmp_path / 'a.db'}") as agent,
        client_for(twin, contract()) as c,
    ):
        req = ActivityLogRequest(user_id="u1", activity_type="reading", source_ref="r1")
        reply = await c.request("activities_log", req, timeout=60)
        assert reply.success and reply.xp_granted == {"INT": 30}, reply.error
        assert len(lost) == 6
        assert agent.metrics.total("mesh_dead_letters_total") == 0
        assert agent.metrics.total("mesh_store_retries_total") >= 6
