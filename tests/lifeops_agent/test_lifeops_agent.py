"""The LifeOps agent with a real Stats agent through the real broker, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

from lifeops_contract.schemas import (
    CharacterGetRequest,
    TimelineCompleteRequest,
    TimelineDay,
    TimelineGetRequest,
    UserSettingsRequest,
)
from mesh import Agent, codec
from mesh.broker.process import MosquittoProcess
from mesh.client import MeshClient
from mesh.testing.recorder import Recorder
from mesh.testing.wait import eventually
from tests.conftest import user

Start = Callable[..., Any]


async def _total(client: MeshClient, uid: str) -> int:
    r = await client.request("character_get", CharacterGetRequest(user_id=uid))
    return r.total_xp if r.success else 0


async def test_seed_integration_complete_then_total_xp(
    broker: MosquittoProcess, new_db: Callable[[], str], start_agent: Start, tester: MeshClient
) -> None:
    """The seed's integration test: complete morning_stretch, then total_xp is above 0."""
    uid = user()
    async with start_agent("stats", broker, new_db()), start_agent("lifeops", broker, new_db()):
        reply = await tester.request(
            "timeline_complete", TimelineCompleteRequest(user_id=uid, item_code="morning_stretch")
        )
        assert reply.success, reply.error
        assert reply.xp_pending is False
        assert reply.xp_granted == {"DEX": 10, "STA": 5}
        assert reply.new_streak == 1 and reply.best_streak == 1
        assert reply.character_level_up is False
        assert "Gained XP: STA+5, DEX+10" in reply.message
        assert await _total(tester, uid) > 0
        again = await tester.request(
            "timeline_complete", TimelineCompleteRequest(user_id=uid, item_code="morning_stretch")
        )
        assert again.success is False and again.error.code == "already_completed"
        assert again.xp_granted == {"DEX": 10, "STA": 5}  # the original result, nothing new
        assert await _total(tester, uid) == 15
        bad = await tester.request(
            "timeline_complete", TimelineCompleteRequest(user_id=uid, item_code="juggling")
        )
        assert bad.success is False and bad.error.code == "unknown_item"


async def test_streaks_follow_local_days_and_reset(
    broker: MosquittoProcess, new_db: Callable[[], str], start_agent: Start, tester: MeshClient
) -> None:
    """Consecutive local days build a streak; a missed day resets it; time zones decide days."""
    uid = user()
    now = dt.datetime.now(dt.UTC)
    async with start_agent("stats", broker, new_db()), start_agent("lifeops", broker, new_db()):

        async def complete(days_ago: int, hour: int = 12) -> Any:
            at = (now - dt.timedelta(days=days_ago)).replace(hour=hour, minute=0)
            at = min(at, now)
            return await tester.request(
                "timeline_complete",
                TimelineCompleteRequest(user_id=uid, item_code="reading", completed_at=at),
            )

        assert (await complete(5)).new_streak == 1
        assert (await complete(4)).new_streak == 2
        assert (await complete(3)).new_streak == 3
        r = await complete(1)  # day 2 missed
        assert r.new_streak == 1 and r.best_streak == 3
        r = await complete(2)  # filled in late: bridges the gap
        assert r.new_streak == 4 and r.best_streak == 5  # run 5..2 ending at that day
        day = await tester.request("timeline_get", TimelineGetRequest(user_id=uid))
        reading = next(i for i in day.timeline.items if i.code == "reading")
        assert reading.done is False and reading.current_streak == 5  # alive until today ends
        # Time zones: 23:30 UTC is already tomorrow in Tokyo.
        tz_user = user()
        s = await tester.request(
            "user_settings", UserSettingsRequest(user_id=tz_user, timezone="Asia/Tokyo")
        )
        assert s.success
        late = (now - dt.timedelta(days=1)).replace(hour=23, minute=30)
        r = await tester.request(
            "timeline_complete",
            TimelineCompleteRequest(user_id=tz_user, item_code="walk", completed_at=late),
        )
        assert r.date == (late + dt.timedelta(hours=9)).date()
        bad = await tester.request(
            "user_settings", UserSettingsRequest(user_id=tz_user, timezone="Mars/Olympus")
        )
        assert bad.success is False and bad.error.code == "invalid_timezone"


async def test_stats_down_then_up(
    broker: MosquittoProcess, new_db: Callable[[], str], start_agent: Start, tester: MeshClient
) -> None:
    """Stats is down: completions succeed with xp_pending; its XP arrives once Stats is back,
    exactly once, and the retained timeline shows it."""
    uid = user()
    stats_db = new_db()
    instance = "down-up-" + uid
    async with start_agent("stats", broker, stats_db, instance=instance, session_expiry_s=600):
        pass  # Stats' durable session exists, so the broker queues for it while it is down
    async with start_agent("lifeops", broker, new_db()) as lifeops:
        lifeops.settings  # noqa: B018 - the agent is running
        codes = ["morning_stretch", "meditation", "gym_session"]
        replies = await asyncio.gather(
            *(
                tester.request(
                    "timeline_complete", TimelineCompleteRequest(user_id=uid, item_code=c)
                )
                for c in codes
            )
        )
        assert all(r.success and r.xp_pending for r in replies)
        pending, _ = await lifeops.receipts.pending()
        assert pending == 3
        async with start_agent("stats", broker, stats_db, instance=instance, session_expiry_s=600):
            await eventually(lambda: _pending_is(lifeops, 0), timeout=30, what="receipts")
            assert await _total(tester, uid) == 15 + 20 + 70
            async with Recorder(broker, [f"lifeops/timeline/{uid}"]) as rec:

                async def settled() -> TimelineDay | None:
                    if not rec.messages:
                        return None
                    day = codec.decode(rec.messages[-1].payload, TimelineDay)
                    return None if any(i.xp_pending for i in day.items) else day

                # retained states are published coalesced, a moment after the commit
                state = await eventually(settled, what="retained timeline without xp_pending")
            assert state is not None and state.done == 3
            await asyncio.sleep(1.5)  # a sweep or two more: nothing is sent twice
            assert await _total(tester, uid) == 105


async def _pending_is(agent: Agent, n: int) -> bool:
    return bool((await agent.receipts.pending())[0] == n)


async def _ready(items: list[Any]) -> list[Any]:
    return items


async def test_oura_import_publishes_each_day_once(
    broker: MosquittoProcess, new_db: Callable[[], str], start_agent: Start, tester: MeshClient
) -> None:
    """`lifeops-mesh oura import` of the sample export (oura_import requests): XP by the rules
    once; a re-import adds
    nothing."""
    import sys
    from pathlib import Path

    uid = user()
    sample = Path(__file__).parents[1] / "data" / "oura"

    async def run_import() -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "lifeops_mesh",
            "oura",
            "import",
            str(sample),
            "--user",
            uid,
            "--broker",
            broker.url("tester"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert b"\r" not in err  # no progress bar when stderr is not a terminal
        return out.decode()

    async with start_agent("stats", broker, new_db()), start_agent("lifeops", broker, new_db()):
        assert "3 days for " + uid + ": 3 new, 0 already imported" in await run_import()
        # day 20: 82*.3=24 WIS + 78*.5=39 STA + 70*.3=21 DEX; day 21: 22+33+16; day 22: 27+44
        await eventually(lambda: _equals(_total(tester, uid), 226), what="Oura XP")
        assert "0 new, 3 already imported" in await run_import()
        await asyncio.sleep(1)
        assert await _total(tester, uid) == 226


async def _equals(coro: Awaitable[int], expected: int) -> bool:
    return bool(await coro == expected)
