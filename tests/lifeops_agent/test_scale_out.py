"""Streaks on two real LifeOps processes behind one MQTT v5 shared subscription (`--shared`), on
PostgreSQL and on one SQLite file shared by both: a completion reads the user's history, then
writes its streak and the best streak; days completed at the same moment on both instances
give the streaks one instance gives.

Hypothesis draws the days; they are completed all at once, so neighbouring days land on
different instances at the same moment (a day that fills a gap joins two runs).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifeops_agent import days
from lifeops_contract import contract
from lifeops_contract.schemas import (
    CharacterGetRequest,
    TimelineCompleteReply,
    TimelineCompleteRequest,
    TimelineGetRequest,
)
from lifeops_mesh.processes import agent_process
from mesh import MeshClient
from mesh.broker.process import MosquittoProcess
from mesh.testing.wait import eventually
from tests.conftest import user
from tests.support.shared import Instances, running, shared_instances


@pytest.fixture
def two_lifeops(
    broker: MosquittoProcess, db_url: str, new_db: Callable[[], str], tmp_path: Path
) -> Iterator[Instances]:
    """Two LifeOps processes on one database, and a Stats on a database of its own."""
    stats = agent_process(
        "stats", broker.url("stats"), new_db(), data_dir=tmp_path / "stats",
        instance="s" + uuid.uuid4().hex[:6],
    )  # fmt: skip
    lifeops = shared_instances("lifeops", broker, db_url, tmp_path)
    with running([stats]), running(lifeops.procs):
        yield lifeops


async def _streaks(broker: MosquittoProcess, back: set[int]) -> None:
    uid = user()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
    async with MeshClient(broker.url("tester"), contract()) as c:

        async def complete(b: int) -> TimelineCompleteReply:
            at = now - dt.timedelta(days=b)
            req = TimelineCompleteRequest(user_id=uid, item_code="walk", completed_at=at)
            reply: TimelineCompleteReply = await c.request("timeline_complete", req, timeout=30)
            assert reply.success, reply.error
            return reply

        replies = await asyncio.gather(*(complete(b) for b in sorted(back)))
        done = {(now - dt.timedelta(days=b)).date() for b in back}
        best = days.longest_run(done)
        got = await c.request("timeline_get", TimelineGetRequest(user_id=uid))
        (walk,) = [i for i in got.timeline.items if i.code == "walk"]
        assert walk.best_streak == best, "a run joined on two instances was never seen whole"
        # the completion committed last saw every other one
        assert max(r.best_streak for r in replies) == best
        assert max(r.new_streak for r in replies) <= best
        assert len({r.activity_id for r in replies}) == len(back)

        async def counted() -> bool:
            sheet = await c.request("character_get", CharacterGetRequest(user_id=uid))
            return bool(sheet.success) and sheet.character.activities == len(back)

        await eventually(counted, timeout=30, what="each completion counted once by Stats")


def test_days_completed_on_two_instances_at_once_give_one_instances_streaks(
    broker: MosquittoProcess, two_lifeops: Instances
) -> None:
    """Scattered days of one item completed at once on both instances: the best streak is the
    longest run of the days, and each completion counts once."""

    @settings(
        max_examples=12,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(back=st.sets(st.integers(0, 15), min_size=2, max_size=10))
    def example(back: set[int]) -> None:
        asyncio.run(asyncio.wait_for(_streaks(broker, back), timeout=60))

    example()
    assert all(two_lifeops.received()), f"work was not shared: {two_lifeops.received()}"
