"""A PUBACK is not durability: completions survive broker SIGKILLs, full queues and agent crashes.

Every accepted completion must turn into its XP in Stats exactly once, whatever failed.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lifeops_agent.timeline import load_timeline
from lifeops_contract import contract as default_contract
from lifeops_contract.schemas import CharacterGetRequest, TimelineCompleteRequest
from lifeops_mesh.broker import local_broker
from lifeops_mesh.processes import agent_process
from mesh.broker.process import MosquittoProcess
from mesh.client import MeshClient
from mesh.errors import MeshError
from mesh.testing.mqtt_cli import MosquittoCli
from mesh.testing.processes import AgentProcess
from mesh.testing.wait import eventually
from tests.conftest import user

ITEMS = load_timeline().items
XP = {i.code: sum(i.xp.values()) for i in ITEMS}


async def complete_with_retry(
    client: MeshClient, uid: str, code: str, deadline_s: float = 90
) -> bool:
    """What a careful client does: retry until an answer. True when LifeOps accepted it."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            r = await client.request(
                "timeline_complete", TimelineCompleteRequest(user_id=uid, item_code=code), timeout=3
            )
        except MeshError:
            await asyncio.sleep(0.2)
            continue
        if r.success:
            return True
        if r.error and r.error.code == "already_completed":
            return True  # an earlier attempt was accepted; its answer got lost
        raise AssertionError(f"refused: {r.error}")
    return False


async def drive(
    url: str, users: list[str], faults: Callable[[], Any] | None = None
) -> dict[str, int]:
    """Complete every item for every user (8 at a time) while `faults` runs; returns the
    expected XP per user from the accepted completions."""
    expected = {u: 0 for u in users}
    work = [(u, i.code) for u in users for i in ITEMS]
    sem = asyncio.Semaphore(8)
    async with MeshClient(url, default_contract()) as client:

        async def one(uid: str, code: str) -> None:
            async with sem:
                if await complete_with_retry(client, uid, code):
                    expected[uid] += XP[code]

        fault_task = asyncio.ensure_future(faults()) if faults else None
        await asyncio.gather(*(one(u, c) for u, c in work))
        if fault_task is not None:
            await fault_task
    return expected


async def totals(url: str, users: list[str]) -> dict[str, int]:
    out = {}
    async with MeshClient(url, default_contract()) as client:
        for uid in users:
            r = await client.request("character_get", CharacterGetRequest(user_id=uid), timeout=10)
            out[uid] = r.total_xp if r.success else 0
    return out


async def settle(
    broker: MosquittoProcess, users: list[str], expected: dict[str, int], timeout: float = 90
) -> None:
    async def same() -> bool:
        try:
            return await totals(broker.url("tester"), users) == expected
        except MeshError:
            return False

    await eventually(same, timeout=timeout, interval=0.5, what="Stats totals = accepted XP")
    await asyncio.sleep(2)  # a few more sweeps: nothing arrives twice
    assert await totals(broker.url("tester"), users) == expected


def _agents(broker: MosquittoProcess, tmp: Path) -> tuple[AgentProcess, AgentProcess]:
    stats = agent_process(
        "stats", broker.url("stats"), f"sqlite:///{tmp / 'stats.db'}", data_dir=tmp, instance="dur"
    )
    lifeops = agent_process(
        "lifeops",
        broker.url("lifeops"),
        f"sqlite:///{tmp / 'lifeops.db'}",
        data_dir=tmp,
        instance="dur",
    )
    return stats, lifeops


async def test_broker_sigkill_during_a_stream_loses_nothing(
    own_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """Completions stream in while Mosquitto is SIGKILLed three times (and once stays down for
    several seconds); every accepted completion has its XP in Stats exactly once."""
    stats, lifeops = _agents(own_broker, tmp_path)
    stats.start()
    lifeops.start()
    users = [user() for _ in range(12)]
    kills = 0

    async def faults() -> None:
        nonlocal kills
        for outage in (0.3, 0.5, 4.0):
            await asyncio.sleep(0.7)
            own_broker.kill()
            kills += 1
            await asyncio.sleep(outage)
            await asyncio.to_thread(own_broker.start)

    try:
        expected = await drive(own_broker.url("tester"), users, faults)
        assert kills == 3
        assert sum(expected.values()) == len(users) * sum(XP.values()), "a completion was refused"
        await settle(own_broker, users, expected)
    finally:
        lifeops.stop()
        stats.stop()


async def test_full_subscriber_queue_loses_nothing(tmp_path: Path) -> None:
    """Stats is stopped and its queue overflows (Mosquitto drops the excess silently while
    telling LifeOps the publish succeeded); receipts make LifeOps resend the lost ones."""
    broker = local_broker(
        tmp_path / "broker", overrides={"max_queued_messages": "5", "sys_interval": "1"}
    )
    broker.start()
    try:
        stats, lifeops = _agents(broker, tmp_path)
        stats.start()
        stats.stop()  # durable session: the broker now queues for it, up to 5 messages
        lifeops.start()
        users = [user() for _ in range(8)]  # 56 completions
        expected = await drive(broker.url("tester"), users)

        async def dropped() -> bool:
            return await dropped_count(broker) > 0

        # ($SYS is restated every second; the receipts' sends trail the completions)
        await eventually(dropped, timeout=15, interval=0.5, what="the queue limit reached")
        stats.start()
        await settle(broker, users, expected)
        lifeops.stop()
        stats.stop()
    finally:
        broker.stop()


async def test_kill_lifeops_with_records_waiting_for_receipts(
    own_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """kill -9 of LifeOps while its completions wait for Stats (which has never run, so the
    broker discarded them after a successful PUBACK): after the restart, reconciliation sends
    them again and each is counted once."""
    stats, lifeops = _agents(own_broker, tmp_path)
    lifeops.start()
    users = [user() for _ in range(3)]
    expected = await drive(own_broker.url("tester"), users)
    lifeops.signal(signal.SIGKILL)
    lifeops.wait(10)
    stats.start()
    await asyncio.sleep(1)
    assert sum((await totals(own_broker.url("tester"), users)).values()) == 0
    lifeops.start()
    try:
        await settle(own_broker, users, expected)
    finally:
        lifeops.stop()
        stats.stop()


async def dropped_count(broker: MosquittoProcess) -> int:
    """Mosquitto's own count of messages it dropped (queue limits), from $SYS."""
    sub = await MosquittoCli(broker).sub(
        "$SYS/broker/publish/messages/dropped", count=1, wait_s=5, v5=False
    )
    got = await sub.result()
    assert got.returncode == 0, got.stderr
    out = got.stdout
    return int(out.strip())
