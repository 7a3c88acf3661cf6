"""Read-then-write paths on two real Stats processes behind one MQTT v5 shared subscription
(`--shared`), on PostgreSQL and on one SQLite file shared by both: whatever the interleaving,
totals, achievements and level-ups are those of one instance.

Each path reads what a character (or an Oura day) already has, then writes what follows from
it. Hypothesis draws the work; it is sent all at once, so the broker hands consecutive messages
to different instances, which run them at the same moment. The two processes run for the whole
test; each example is a user of its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifeops_contract import contract
from lifeops_contract.schemas import (
    ActivityLogReply,
    ActivityLogRequest,
    CharacterGetRequest,
    EventsRecentRequest,
    LevelUp,
    OuraScores,
    OuraSynced,
)
from mesh import MeshClient
from mesh.broker.process import MosquittoProcess
from stats_agent import game
from stats_agent.rules import Rules, load_rules
from tests.conftest import user
from tests.support.shared import Instances, running, shared_instances

RULES = load_rules()
START = dt.date(2026, 3, 1)
SETTINGS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def two_stats(broker: MosquittoProcess, db_url: str, tmp_path: Path) -> Iterator[Instances]:
    """Two Stats processes on one database (one SQLite file, or one PostgreSQL database)."""
    stats = shared_instances("stats", broker, db_url, tmp_path)
    with running(stats.procs):
        yield stats


# -- what one instance gives ---------------------------------------------------------------


def _check_levelups(levelups: list[LevelUp], stat_xp: dict[str, int], total: int) -> None:
    """The level-ups of the character and of each stat form one chain from level 1 to the
    level its XP gives (a grant may jump levels: one event), each event at the XP it names.
    Two agents granting from the same start would fork it; a grant counted twice would end
    it higher."""
    finals: dict[str | None, int] = {None: total}
    finals.update(stat_xp)
    chains: dict[str | None, list[LevelUp]] = {}
    for e in levelups:
        assert e.stat in finals, f"a level-up of {e.stat} which has no XP"
        assert game.level_for(e.total_xp).level == e.new_level, e
        chains.setdefault(e.stat, []).append(e)
    for stat, xp in finals.items():
        chain = sorted(chains.get(stat, []), key=lambda e: e.new_level)
        levels = [1] + [e.new_level for e in chain]
        assert [e.previous_level for e in chain] == levels[:-1], f"{stat}: {levels}"
        assert levels[-1] == game.level_for(xp).level, f"{stat}: {levels}"


def _achievements(rules: Rules, activities: int, stat_xp: dict[str, int]) -> set[str]:
    """Every measure only grows (no streak here), so what the end earns was earned once."""
    total = sum(stat_xp.values())
    progress = game.Progress(
        activities=activities, level=game.level_for(total).level, stat_xp=stat_xp, streak=0
    )
    return {r.code for r in rules.achievements if game.earned(r, progress)}


async def _check_character(
    c: MeshClient, uid: str, stat_xp: dict[str, int], activities: int
) -> None:
    stat_xp = {s: x for s, x in stat_xp.items() if x}
    total = sum(stat_xp.values())
    sheet = await c.request("character_get", CharacterGetRequest(user_id=uid))
    if not stat_xp:
        assert not sheet.success and sheet.error.code == "not_found"
        return
    assert sheet.success, sheet.error
    got = {s: v.xp for s, v in sheet.character.stats.items() if v.xp}
    assert (sheet.total_xp, got) == (total, stat_xp), "XP lost or doubled"
    assert sheet.character.activities == activities
    want = _achievements(RULES, activities, stat_xp)
    assert set(sheet.character.achievements) == want
    events = await c.request("events_recent", EventsRecentRequest(user_id=uid, limit=500))
    _check_levelups(events.levelups, stat_xp, total)
    assert sorted(a.achievement_code for a in events.achievements) == sorted(want)


# -- Oura revisions --------------------------------------------------------------------------

scores = st.builds(
    OuraScores,
    sleep=st.none() | st.integers(0, 100),
    readiness=st.none() | st.integers(0, 100),
    activity=st.none() | st.integers(0, 100),
)
versions = st.lists(st.tuples(scores, scores, scores), min_size=1, max_size=8)


# each revision better than the last: revisions 1 and 2 both add to revision 0 (#22: two
# instances each read what revision 0 gave and both granted the rest)
ISSUE_DAY = (
    OuraScores(sleep=50, readiness=50, activity=50),
    OuraScores(sleep=70, readiness=70, activity=70),
    OuraScores(sleep=90, readiness=90, activity=90),
)


def _oura_xp(s: OuraScores) -> dict[str, int]:
    return game.oura_grants(
        RULES, {"sleep": s.sleep, "readiness": s.readiness, "activity": s.activity}
    )


async def _oura(broker: MosquittoProcess, days: list[tuple[OuraScores, ...]]) -> None:
    uid = user()
    events = [
        [
            OuraSynced(user_id=uid, date=START + dt.timedelta(days=d), scores=day[r], revision=r)
            for d, day in enumerate(days)
        ]
        for r in range(3)
    ]
    async with (
        MeshClient(broker.url("lifeops"), contract()) as lifeops,
        MeshClient(broker.url("tester"), contract()) as tester,
    ):

        async def send(ev: OuraSynced) -> ActivityLogReply:
            reply: ActivityLogReply = await lifeops.request("oura_synced", ev, timeout=30)
            assert reply.success, reply.error
            return reply

        replies = await asyncio.gather(*(send(ev) for ev in events[0]))
        # every day's revisions 1 and 2 back to back: the two instances take one each
        later = [ev for pair in zip(events[1], events[2], strict=True) for ev in pair]
        replies += await asyncio.gather(*(send(ev) for ev in later))
        # per stat, a day's XP is the rules' XP of its best version
        want: dict[str, int] = {}
        counted = 0
        for day in days:
            best: dict[str, int] = {}
            for version in day:
                for stat, xp in _oura_xp(version).items():
                    best[stat] = max(best.get(stat, 0), xp)
            counted += bool(best)
            for stat, xp in best.items():
                want[stat] = want.get(stat, 0) + xp
        granted: dict[str, int] = {}
        for r in replies:
            for stat, xp in r.xp_granted.items():
                granted[stat] = granted.get(stat, 0) + xp
        assert granted == want, "the replies granted more (or less) than the best versions"
        await _check_character(tester, uid, want, counted)


def test_concurrent_versions_of_an_oura_day_grant_what_one_instance_does(
    broker: MosquittoProcess, two_stats: Instances
) -> None:
    """Revision 0 of each day, then revisions 1 and 2 of each day back to back to the two
    instances: per stat, each day gives the XP of its best version, once."""

    @SETTINGS
    @given(days=versions)
    @hypothesis.example(days=[ISSUE_DAY] * 8)  # the issue's scenario, smaller
    def example(days: list[tuple[OuraScores, ...]]) -> None:
        asyncio.run(asyncio.wait_for(_oura(broker, days), timeout=60))

    example()
    assert all(two_stats.received()), f"work was not shared: {two_stats.received()}"


# -- achievements and level-ups at a threshold crossed by both instances at once -----------


async def _crossing(broker: MosquittoProcess, amounts: list[tuple[str, int]]) -> None:
    uid = user()
    async with MeshClient(broker.url("tester"), contract()) as c:

        async def send(stat: str, xp: int) -> ActivityLogReply:
            req = ActivityLogRequest(
                user_id=uid, activity_type="custom", custom_xp={stat: xp},
                source_ref=uuid.uuid4().hex,
            )  # fmt: skip
            reply: ActivityLogReply = await c.request("activities_log", req, timeout=30)
            assert reply.success, reply.error
            return reply

        replies = await asyncio.gather(*(send(s, x) for s, x in amounts))
        want: dict[str, int] = {}
        for stat, xp in amounts:
            want[stat] = want.get(stat, 0) + xp
        awarded = sorted(code for r in replies for code in r.achievements)
        assert awarded == sorted(_achievements(RULES, len(amounts), want)), "awarded twice"
        ups = [r.new_level for r in replies if r.character_level_up]
        assert len(ups) == len(set(ups)), "one level reached twice"
        await _check_character(c, uid, want, len(amounts))


def test_thresholds_crossed_by_two_instances_at_once_award_once(
    broker: MosquittoProcess, two_stats: Instances
) -> None:
    """A fresh character's activities all at once (first activity, level 5 and 10, 1,000 XP
    in one stat are crossed by whichever instance gets there): each achievement and level-up
    once, with the totals of one instance."""
    amount = st.tuples(st.sampled_from(["STR", "INT"]), st.integers(1, 600))

    @SETTINGS
    @given(amounts=st.lists(amount, min_size=2, max_size=12))
    def example(amounts: list[tuple[str, int]]) -> None:
        asyncio.run(asyncio.wait_for(_crossing(broker, amounts), timeout=60))

    example()
    assert all(two_stats.received()), f"work was not shared: {two_stats.received()}"
