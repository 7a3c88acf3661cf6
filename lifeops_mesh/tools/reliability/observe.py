"""What an outside subscriber sees during a reliability run: the events as they arrive (a
durable QoS 1 session, like Home Assistant's), the events it can catch up on afterwards
(stats/events/recent), and the retained states the broker holds at the end."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

from lifeops_contract import contract
from lifeops_contract.schemas import AchievementUnlocked, EventsRecentRequest, LevelUp
from mesh import MeshClient, codec, plain_transport
from mesh.client import broker_transport
from mesh.settings import tool_broker
from mesh.transport import Inbound

EventIds = set[str]


def achievement_id(user_id: str, code: str) -> str:
    return f"ach:{user_id}:{code}"


class EventListener:
    """Subscribes to stats/levelup and stats/achievement on a durable session (it survives
    broker restarts and its own reconnects), and records every event id received."""

    def __init__(self, url: str) -> None:
        self.transport = broker_transport(
            tool_broker(url),
            client_id=f"reliability-events-{uuid.uuid4().hex[:8]}",
            session_expiry_s=3600,
        )
        self.transport.on_message = self._on_message
        self.received: list[str] = []  # with repeats (at least once)

    async def _on_message(self, msg: Inbound) -> int:
        if msg.topic == "stats/levelup":
            self.received.append(codec.decode(msg.payload, LevelUp).event_id)
        elif msg.topic == "stats/achievement":
            ev = codec.decode(msg.payload, AchievementUnlocked)
            self.received.append(achievement_id(ev.user_id, ev.achievement_code))
        return 0

    async def start(self) -> None:
        await self.transport.subscribe(["stats/levelup", "stats/achievement"])
        await self.transport.connect(timeout=10)

    async def stop(self) -> None:
        await self.transport.disconnect()


async def caught_up(url: str, users: list[str], since: dt.datetime) -> EventIds:
    """Every event a subscriber can fetch with stats/events/recent (paged by time)."""
    out: EventIds = set()
    async with MeshClient(url, contract()) as client:
        for uid in users:
            start = since
            while True:
                req = EventsRecentRequest(user_id=uid, since=start, limit=500)
                reply = await client.request("events_recent", req, timeout=10)
                out.update(e.event_id for e in reply.levelups)
                out.update(
                    achievement_id(a.user_id, a.achievement_code) for a in reply.achievements
                )
                full = [
                    times[-1]
                    for times in (
                        [e.occurred_at for e in reply.levelups],
                        [a.awarded_at for a in reply.achievements],
                    )
                    if len(times) == 500
                ]
                if not full:
                    break
                start = min(full)  # the next page from where a full list ended
    return out


async def retained(url: str, topics: list[str], settle_s: float = 2.0) -> dict[str, bytes]:
    """The retained message the broker holds for each of `topics` (absent: none)."""
    got: dict[str, bytes] = {}
    done = asyncio.Event()

    async def on_message(msg: Inbound) -> int:
        if msg.retain:
            got[msg.topic] = msg.payload
            if len(got) == len(topics):
                done.set()
        return 0

    t = plain_transport(url, prefix="reliability-retained")
    t.on_message = on_message
    await t.subscribe(topics)
    await t.connect(timeout=10)
    try:
        async with asyncio.timeout(settle_s):
            await done.wait()
    except TimeoutError:
        pass  # some topics hold nothing: that is what is reported
    finally:
        await t.disconnect()
    return got
