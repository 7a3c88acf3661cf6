"""Scale-out: three Stats agents on one PostgreSQL behind an MQTT v5 shared subscription."""

from __future__ import annotations

import asyncio
import contextlib

from lifeops_contract import contract as default_contract
from lifeops_contract.schemas import ActivityLogRequest, CharacterGetRequest
from mesh.broker.process import MosquittoProcess
from mesh.client import MeshClient
from tests.conftest import StartAgent, user


async def test_three_agents_give_the_same_totals_as_one(
    broker: MosquittoProcess, pg_url: str, start_stats: StartAgent
) -> None:
    """Work is spread over the group; no XP is lost or doubled, duplicates included."""
    users = [user() for _ in range(8)]
    async with contextlib.AsyncExitStack() as stack:
        agents = [
            await stack.enter_async_context(start_stats(broker, pg_url, share_group="stats"))
            for _ in range(3)
        ]
        assert all(a.subscriptions()[0].startswith("$share/stats/") for a in agents)
        await asyncio.sleep(0.2)
        async with MeshClient(broker.url("tester"), default_contract()) as client:
            reqs = []
            for i in range(240):
                uid = users[i % len(users)]
                reqs.append(
                    ActivityLogRequest(
                        user_id=uid,
                        activity_type="reading",
                        source="manual",
                        source_ref=f"{uid}-{i % 200}",
                    )
                )
            sem = asyncio.Semaphore(64)

            async def send(r: ActivityLogRequest) -> None:
                async with sem:
                    reply = await client.request("activities_log", r, timeout=20)
                    assert reply.success, reply.error

            await asyncio.gather(*(send(r) for r in reqs))
            totals = {}
            for uid in users:
                sheet = await client.request("character_get", CharacterGetRequest(user_id=uid))
                totals[uid] = sheet.total_xp
        handled = [a.metrics.total("mesh_messages_received_total") for a in agents]
    # 200 distinct source_refs, 40 repeats: 200 grants of INT 30
    assert sum(totals.values()) == 200 * 30
    assert all(h > 0 for h in handled), f"work was not shared: {handled}"
