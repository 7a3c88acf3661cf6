"""`lifeops-mesh demo`: a realistic week for two users pushed through a running mesh."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from typing import Any

from tqdm import tqdm

from lifeops_contract import contract
from lifeops_contract.schemas import (
    AchievementUnlocked,
    ActivityLogRequest,
    CharacterGetRequest,
    LevelUp,
    OuraDay,
    OuraImportRequest,
    OuraScores,
    TimelineCompleteRequest,
    TimelineGetRequest,
)
from lifeops_mesh.tools.progress import progress
from lifeops_mesh.tools.watch import Watch
from mesh import DecodeError, Inbound, MeshClient, codec

# Who does what: (user, share of items done on a day, items they favour)
PEOPLE = {
    "ada": (0.8, ["morning_stretch", "meditation", "reading", "journaling", "gym_session"]),
    "ben": (0.6, ["walk", "gym_session", "call_a_friend", "reading", "morning_stretch"]),
}
HOURS = {
    "morning_stretch": 7,
    "meditation": 8,
    "gym_session": 18,
    "walk": 12,
    "reading": 21,
    "journaling": 22,
    "call_a_friend": 19,
}


def _event_line(msg: Inbound) -> str | None:
    try:
        if msg.topic == "stats/levelup":
            ev = codec.decode(msg.payload, LevelUp)
            what = "character" if ev.stat is None else ev.stat
            return f"  LEVEL UP  {ev.user_id}: {what} {ev.previous_level} -> {ev.new_level}"
        ev2 = codec.decode(msg.payload, AchievementUnlocked)
        return f"  ACHIEVEMENT  {ev2.user_id}: {ev2.title}"
    except DecodeError:
        return None


def week_plan(days: int, rng: random.Random) -> list[tuple[str, str, dt.datetime]]:
    """(user, item, when) for every completion of the demo's days, oldest first."""
    today = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    plan: list[tuple[str, str, dt.datetime]] = []
    for back in range(days - 1, -1, -1):
        day = today - dt.timedelta(days=back)
        for user, (share, items) in PEOPLE.items():
            for item in items:
                if rng.random() < share or item == items[0]:
                    plan.append((user, item, min(day.replace(hour=HOURS[item]), today)))
    return plan


async def run_demo(broker_url: str, *, days: int = 7, seed: int = 7) -> int:
    rng = random.Random(seed)
    plan = week_plan(days, rng)
    print(f"demo: a week for {', '.join(PEOPLE)}: {len(plan)} completions and Oura scores")
    async with (
        MeshClient(broker_url, contract()) as client,
        Watch(broker_url, ["stats/levelup", "stats/achievement"]) as watch,
    ):
        with progress(total=len(plan), unit="completion") as bar:
            printer = asyncio.create_task(_show_events(watch, bar))
            accepted, repeated = await _complete_all(client, plan, bar)
            await _oura_days(client, days, rng)
            await asyncio.sleep(1.5)  # let the last events arrive
            printer.cancel()
        print(f"demo: {accepted} completions accepted, {repeated} already done before")
        await _summary(client)
    return 0


async def _show_events(watch: Watch, bar: tqdm[Any]) -> None:
    async for msg in watch.stream():
        line = _event_line(msg)
        if line and any(f" {u}:" in line for u in PEOPLE):
            bar.write(line)


async def _complete_all(
    client: MeshClient, plan: list[tuple[str, str, dt.datetime]], bar: tqdm[Any]
) -> tuple[int, int]:
    accepted = repeated = 0
    for user, item, at in plan:
        reply = await client.request(
            "timeline_complete",
            TimelineCompleteRequest(user_id=user, item_code=item, completed_at=at),
        )
        if reply.success:
            accepted += 1
        elif reply.error and reply.error.code == "already_completed":
            repeated += 1
        else:
            bar.write(f"  refused: {reply.error}")
        bar.update()
    return accepted, repeated


async def _oura_days(client: MeshClient, days: int, rng: random.Random) -> None:
    today = dt.date.today()
    for user in PEOPLE:
        oura = [
            OuraDay(
                date=today - dt.timedelta(days=b),
                scores=OuraScores(
                    sleep=rng.randint(60, 95),
                    readiness=rng.randint(55, 95),
                    activity=rng.randint(50, 98),
                ),
            )
            for b in range(days)
        ]
        await client.request("oura_import", OuraImportRequest(user_id=user, days=oura))


async def _summary(client: MeshClient) -> None:
    for user in PEOPLE:
        sheet = await client.request("character_get", CharacterGetRequest(user_id=user))
        if sheet.success and sheet.character:
            c = sheet.character
            stats = ", ".join(f"{s} {st.level}" for s, st in c.stats.items())
            print(
                f"  {user}: level {c.level}, {c.total_xp} XP ({stats}); "
                f"achievements: {', '.join(c.achievements) or '-'}"
            )


async def quick_demo(client: MeshClient) -> None:
    """What `up --demo` shows: two completions and three activities for user `demo`
    (idempotent per day), the timeline and the character sheet."""
    today = dt.date.today().isoformat()
    for code in ("morning_stretch", "meditation"):
        done = await client.request(
            "timeline_complete", TimelineCompleteRequest(user_id="demo", item_code=code)
        )
        if done.success:
            xp = "XP pending" if done.xp_pending else done.message
            print(f"  demo: completed {code} (streak {done.new_streak}) -> {xp}")
        else:
            print(f"  demo: {code}: {done.error.message if done.error else 'failed'}")
    timeline = (await client.request("timeline_get", TimelineGetRequest(user_id="demo"))).timeline
    print(f"  demo: timeline {timeline.date}: {timeline.done}/{timeline.total} items done")
    for activity in ("gym_session", "reading", "meditation"):
        req = ActivityLogRequest(
            user_id="demo",
            activity_type=activity,
            source="manual",
            source_ref=f"demo:{activity}:{today}",
        )
        reply = await client.request("activities_log", req)
        note = " (already logged today)" if reply.duplicate else ""
        print(f"  demo: {activity:<12} -> {reply.message}{note}")
    sheet = await client.request("character_get", CharacterGetRequest(user_id="demo"))
    c = sheet.character
    print(
        f"  demo: character level {c.level}, total XP {c.total_xp}, "
        f"achievements {', '.join(c.achievements) or '-'}"
    )
