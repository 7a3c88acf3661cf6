"""Real processes, real crashes: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Awaitable
from pathlib import Path

from lifeops_contract import contract as default_contract
from lifeops_contract.schemas import ActivityCompleted, ActivityLogRequest, CharacterGetRequest
from lifeops_mesh.processes import agent_process
from mesh import Inbound, codec
from mesh.agent import Agent
from mesh.broker.process import MosquittoProcess
from mesh.client import MeshClient
from mesh.testing.brokers import connect_as
from mesh.testing.wait import eventually
from tests.conftest import StartAgent, user


async def _publish_completions(broker: MosquittoProcess, uid: str, n: int, xp: int = 3) -> None:
    """n distinct completions worth DEX `xp` each, fire-and-forget (no response topic), as
    LifeOps sends them (only LifeOps may)."""
    t = await connect_as(broker, "lifeops", prefix="pub")
    try:
        await asyncio.gather(
            *(
                t.publish(
                    "lifeops/activity/completed",
                    codec.encode(
                        ActivityCompleted(
                            activity_id=f"{uid}-{i}",
                            user_id=uid,
                            activity_type="timeline_x",
                            custom_xp={"DEX": xp},
                        )
                    ),
                )
                for i in range(n)
            )
        )
    finally:
        await t.disconnect()


async def _total_xp(broker: MosquittoProcess, uid: str) -> int:
    async with MeshClient(broker.url("tester"), default_contract()) as c:
        r = await c.request("character_get", CharacterGetRequest(user_id=uid), timeout=10)
        return r.total_xp if r.success else 0


async def test_kill_before_acknowledgement_redelivers(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    """Messages received but not acknowledged by a frozen, then killed, agent are redelivered."""
    db = f"sqlite:///{tmp_path / 'stats.db'}"
    proc = agent_process(
        "stats", broker.url("stats"), db, data_dir=tmp_path, instance=uuid.uuid4().hex[:6]
    )
    proc.start()
    uid = user()
    try:
        proc.signal(signal.SIGSTOP)
        await _publish_completions(broker, uid, 40)
        await asyncio.sleep(0.3)
        proc.kill()  # SIGKILL while stopped: nothing was processed or acknowledged
        proc.start()
        total = await eventually(lambda: _total_xp(broker, uid), what="XP after restart")
        await eventually(
            lambda: _equals(_total_xp(broker, uid), 120), timeout=15, what="all 40 completions"
        )
        assert total <= 120
    finally:
        proc.stop()


async def _ready(items: list[Inbound]) -> list[Inbound]:
    return items


async def _reconnected(agent: Agent, before: int = 0) -> bool:
    await asyncio.sleep(0.1)  # let the SUBACK of a resubscription arrive
    return agent.transport.connected and agent.transport.reconnects > before


async def _equals(coro: Awaitable[int], expected: int) -> bool:
    return bool(await coro == expected)


async def test_crash_between_commit_and_ack_does_not_double(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    """The agent dies right after a commit, before acks: redelivery finds the inbox record."""
    db = f"sqlite:///{tmp_path / 'stats.db'}"
    instance = uuid.uuid4().hex[:6]
    crashing = agent_process(
        "stats",
        broker.url("stats"),
        db,
        data_dir=tmp_path,
        instance=instance,
        env={"LIFEOPS_FAILPOINT": "exit_after_commit:1"},
    )
    crashing.start()
    uid = user()
    await _publish_completions(broker, uid, 30)
    assert crashing.wait(20) == 137, "the failpoint should have ended the process"
    healthy = agent_process("stats", broker.url("stats"), db, data_dir=tmp_path, instance=instance)
    healthy.start()
    try:
        await eventually(
            lambda: _equals(_total_xp(broker, uid), 90),
            timeout=15,
            what="30 completions counted once",
        )
        await asyncio.sleep(0.5)
        assert await _total_xp(broker, uid) == 90
    finally:
        healthy.stop()


async def test_queued_while_agent_down_and_broker_restarts(
    own_broker: MosquittoProcess, tmp_path: Path, start_stats: StartAgent
) -> None:
    """Durable session: messages sent while the agent is down arrive when it is back, also
    after a clean broker restart (persistence); the agent reconnects by itself."""
    db = f"sqlite:///{tmp_path / 'stats.db'}"
    instance = uuid.uuid4().hex[:6]
    uid = user()
    async with start_stats(own_broker, db, instance=instance, session_expiry_s=600):
        pass  # creates the durable session and its subscriptions
    await _publish_completions(own_broker, uid, 10)
    own_broker.stop()  # SIGTERM: Mosquitto saves sessions and queued messages
    own_broker.start()
    async with start_stats(own_broker, db, instance=instance, session_expiry_s=600) as agent:
        await eventually(lambda: _equals(_total_xp(own_broker, uid), 30), what="queued messages")
        # broker restart while the agent runs: it reconnects, resubscribes and serves again
        reconnects = agent.transport.reconnects
        own_broker.stop()
        own_broker.start()
        await eventually(lambda: _reconnected(agent, reconnects), timeout=20, what="reconnect")
        async with MeshClient(own_broker.url("tester"), default_contract()) as c:
            r = await c.request(
                "activities_log",
                ActivityLogRequest(user_id=uid, activity_type="reading"),
                timeout=10,
            )
            assert r.success and r.total_xp == 60


async def test_broker_kill_without_session_resubscribes(
    own_broker: MosquittoProcess, tmp_path: Path, start_stats: StartAgent
) -> None:
    """After a SIGKILL of a fresh broker (no snapshot yet), the agent resubscribes by itself."""
    db = f"sqlite:///{tmp_path / 'stats.db'}"
    async with start_stats(own_broker, db) as agent:
        (own_broker.run_dir / "persistence" / "mosquitto.db").unlink(missing_ok=True)
        own_broker.kill()
        own_broker.start()
        await eventually(lambda: _reconnected(agent), timeout=20, what="reconnect")
        async with MeshClient(own_broker.url("tester"), default_contract()) as c:
            r = await c.request(
                "activities_log",
                ActivityLogRequest(user_id=user(), activity_type="reading"),
                timeout=10,
            )
            assert r.success


async def test_agent_survives_a_flood_of_garbage(stats: Agent, broker: MosquittoProcess) -> None:
    """Hundreds of bad messages: each dead-lettered, the agent keeps serving valid traffic."""
    t = await connect_as(broker, "tester", prefix="g")
    bodies = [b"{", b"\xff\xfe", b"[]", b'{"user_id": {"a": 1}}', b"null", b"1e999999"] * 50
    before = stats.metrics.total("mesh_dead_letters_total")
    await asyncio.gather(*(t.publish("stats/activities/log", b) for b in bodies))
    await t.disconnect()

    async def dead() -> bool:
        return stats.metrics.total("mesh_dead_letters_total") - before >= len(bodies)

    await eventually(dead, what="every bad message dead-lettered")
    uid = user()
    assert await eventually(lambda: _total_xp_after_log(broker, uid)) == 30


async def _total_xp_after_log(broker: MosquittoProcess, uid: str) -> int:
    async with MeshClient(broker.url("tester"), default_contract()) as c:
        r = await c.request(
            "activities_log", ActivityLogRequest(user_id=uid, activity_type="reading")
        )
        return r.total_xp or 0


async def test_events_survive_a_crash_between_commit_and_publish(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    """Level-ups committed by an agent that died before publishing them go out after restart,
    each event id once."""
    from mesh.testing.recorder import Recorder

    db = f"sqlite:///{tmp_path / 'stats.db'}"
    instance = uuid.uuid4().hex[:6]
    uid = user()
    async with Recorder(broker, ["stats/levelup"]) as rec:
        crashing = agent_process(
            "stats",
            broker.url("stats"),
            db,
            data_dir=tmp_path,
            instance=instance,
            env={"LIFEOPS_FAILPOINT": "exit_after_commit:1"},
        )
        crashing.start()
        await _publish_completions(broker, uid, 1, xp=30)  # DEX and character reach level 2
        assert crashing.wait(20) == 137
        await asyncio.sleep(0.3)
        assert not [m for m in rec.messages if uid.encode() in m.payload], "published early"
        healthy = agent_process(
            "stats", broker.url("stats"), db, data_dir=tmp_path, instance=instance
        )
        healthy.start()
        try:
            await _publish_completions(broker, uid, 1, xp=30)  # redelivery and a retry: no-ops
            await eventually(lambda: _equals(_total_xp(broker, uid), 30), what="30 XP")
            await eventually(lambda: _ready(rec.messages), what="level-ups after restart")
            await asyncio.sleep(0.5)
        finally:
            healthy.stop()
        ids = [json.loads(m.payload)["event_id"] for m in rec.messages if uid.encode() in m.payload]
        assert sorted(ids) == sorted({f"lvl:{uid}:DEX:2", f"lvl:{uid}:character:2"})
