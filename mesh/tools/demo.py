"""`lifeops-mesh demo`: a realistic week for two users pushed through a running mesh."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import sys

from mesh import codec
from mesh.client import MeshClient
from mesh.errors import DecodeError
from mesh.schemas import (
    AchievementUnlocked,
    CharacterGetRequest,
    LevelUp,
    OuraDay,
    OuraImportRequest,
    OuraScores,
    TimelineCompleteRequest,
)
from mesh.tools.watch import Watch
from mesh.transport import Inbound

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


def _bar(done: int, total: int, width: int = 30) -> None:
    filled = width * done // total
    sys.stderr.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    sys.stderr.flush()


def _say(text: str) -> None:
    sys.stderr.write("\r" + " " * 50 + "\r")
    print(text, flush=True)


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


async def run_demo(broker_url: str, *, days: int = 7, seed: int = 7) -> int:
    rng = random.Random(seed)
    today = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    plan: list[tuple[str, str, dt.datetime]] = []
    for back in range(days - 1, -1, -1):
        day = today - dt.timedelta(days=back)
        for user, (share, items) in PEOPLE.items():
            for item in items:
                if rng.random() < share or item == items[0]:
                    at = day.replace(hour=HOURS[item])
                    plan.append((user, item, min(at, today)))
    print(f"demo: a week for {', '.join(PEOPLE)}: {len(plan)} completions and Oura scores")
    async with (
        MeshClient(broker_url) as client,
        Watch(broker_url, ["stats/levelup", "stats/achievement"]) as watch,
    ):

        async def show_events() -> None:
            async for msg in watch.stream():
                line = _event_line(msg)
                if line and any(f" {u}:" in line for u in PEOPLE):
                    _say(line)

        printer = asyncio.create_task(show_events())
        accepted = repeated = 0
        for n, (user, item, at) in enumerate(plan, 1):
            reply = await client.request(
                "timeline_complete",
                TimelineCompleteRequest(user_id=user, item_code=item, completed_at=at),
            )
            if reply.success:
                accepted += 1
            elif reply.error and reply.error.code == "already_completed":
                repeated += 1
            else:
                _say(f"  refused: {reply.error}")
            _bar(n, len(plan))
        for user in PEOPLE:
            oura = [
                OuraDay(
                    date=(today - dt.timedelta(days=b)).date(),
                    scores=OuraScores(
                        sleep=rng.randint(60, 95),
                        readiness=rng.randint(55, 95),
                        activity=rng.randint(50, 98),
                    ),
                )
                for b in range(days)
            ]
            await client.request("oura_import", OuraImportRequest(user_id=user, days=oura))
        await asyncio.sleep(1.5)  # let the last events arrive
        printer.cancel()
        sys.stderr.write("\n")
        print(f"demo: {accepted} completions accepted, {repeated} already done before")
        for user in PEOPLE:
            sheet = await client.request("character_get", CharacterGetRequest(user_id=user))
            if sheet.success and sheet.character:
                c = sheet.character
                stats = ", ".join(f"{s} {st.level}" for s, st in c.stats.items())
                print(
                    f"  {user}: level {c.level}, {c.total_xp} XP ({stats}); "
                    f"achievements: {', '.join(c.achievements) or '-'}"
                )
    return 0
