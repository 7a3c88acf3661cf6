"""Scale-out: three Stats agents on one PostgreSQL behind an MQTT v5 shared subscription."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from lifeops_contract import contract as default_contract
from lifeops_contract.schemas import ActivityLogRequest, CharacterGetRequest
from lifeops_mesh.processes import agent_process
from mesh.broker.process import MosquittoProcess
from mesh.client import MeshClient
from mesh.errors import RequestTimeout
from mesh.testing.recorder import Recorder
from mesh.testing.wait import eventually
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


class Stream:
    """activities_log at a steady rate, each request retried at most once (same source_ref:
    the same activity) after its timeout."""

    def __init__(self, client: MeshClient, uid: str) -> None:
        self.client, self.uid = client, uid
        self.sent = 0
        self.retried = 0
        self.failed: list[str] = []

    async def one(self, n: int) -> None:
        req = ActivityLogRequest(user_id=self.uid, activity_type="reading", source_ref=f"s{n}")
        for attempt in range(2):
            try:
                reply = await self.client.request("activities_log", req, timeout=5)
            except RequestTimeout:
                self.retried += attempt == 0
                continue
            if not reply.success:
                self.failed.append(f"{n}: {reply.error}")
            return
        self.failed.append(f"{n}: no answer within its timeout and one retry")

    async def run(self, stop: asyncio.Event, rate: float = 40) -> None:
        tasks: list[asyncio.Task[None]] = []
        while not stop.is_set():
            tasks.append(asyncio.create_task(self.one(self.sent)))
            self.sent += 1
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)


async def test_losing_instances_loses_nothing_and_stats_stays_available(
    broker: MosquittoProcess, pg_url: str, tmp_path: Path, start_agent: StartAgent
) -> None:
    """Three Stats processes on PostgreSQL under a steady stream: one stops cleanly (SIGTERM),
    one dies (kill -9). Every request is answered within its timeout or on one retry, the
    totals are exact, and Stats stays available for Home Assistant, for LifeOps and on its
    instance topics while any instance runs; when the last one stops, it is unavailable."""
    uid = user()
    stats = [
        agent_process(
            "stats", broker.url("stats"), pg_url, data_dir=tmp_path / name,
            instance=f"{uid[-4:]}{name}", extra_args=["--shared", "stats"],
        )
        for name in "abc"
    ]  # fmt: skip
    await asyncio.gather(*(asyncio.to_thread(p.start) for p in stats))
    watched = ["ha_bridge/availability/stats", "stats/status/+"]
    async with (
        start_agent("ha_bridge", broker, f"sqlite:///{tmp_path / 'bridge.db'}") as bridge,
        start_agent("lifeops", broker, f"sqlite:///{tmp_path / 'lifeops.db'}") as lifeops,
        Recorder(broker, watched) as seen,
        MeshClient(broker.url("tester"), default_contract()) as client,
    ):
        await eventually(lambda: _true(lifeops.peers.get("stats") is True), what="stats up")
        stream, stop = Stream(client, uid), asyncio.Event()
        running = asyncio.create_task(stream.run(stop))
        lifeops_saw: list[bool] = []
        for second in range(14):
            await asyncio.sleep(1)
            lifeops_saw.append(bool(lifeops.peers.get("stats")))
            if second == 2:
                await asyncio.to_thread(stats[0].stop)
                assert stats[0].proc is not None and stats[0].proc.returncode == 0
            if second == 5:
                stats[1].kill()
        stop.set()
        await running
        assert not stream.failed, stream.failed[:5]
        sheet = await client.request("character_get", CharacterGetRequest(user_id=uid))
        assert sheet.total_xp == 30 * stream.sent
        assert all(lifeops_saw), lifeops_saw
        for_ha = [m.payload for m in seen.on("ha_bridge/availability/stats")]
        assert for_ha and b"offline" not in for_ha, for_ha
        await asyncio.to_thread(stats[2].stop)
        await eventually(
            lambda: _true(seen.on("ha_bridge/availability/stats")[-1].payload == b"offline"),
            what="Stats unavailable in Home Assistant after its last instance",
        )
        await eventually(lambda: _true(lifeops.peers.get("stats") is False), what="LifeOps")
        assert bridge.peers.get("stats") is False
    print(f"{stream.sent} requests, {stream.retried} answered on their one retry")


async def _true(value: bool) -> bool:
    return value
