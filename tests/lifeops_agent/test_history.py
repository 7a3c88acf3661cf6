"""Streaks from bounded history equal streaks from the whole history.

LifeOps reads only a window around the days in question (widened while a run reaches its
edge) and keeps best streaks per item. Hypothesis draws completion days over more than a year,
in any order (past days filling gaps), sends them through the real LifeOps and Stats on the
in-memory twin with SQLite, and compares every streak with the pure rules over all the days.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lifeops_agent import days
from lifeops_contract import contract
from lifeops_contract.schemas import TimelineCompleteRequest, TimelineGetRequest
from lifeops_mesh import registry
from mesh import Agent, availability_will, open_store
from mesh.testing.brokers import InMemoryBroker, client_for
from tests.conftest import make_settings

# A moment already past (a completion may not be in the future), on the day the test runs.
TODAY = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)


async def _agents(twin: InMemoryBroker, tmp: Path) -> list[Agent]:
    out = []
    for name in ("stats", "lifeops"):
        s = make_settings(name, twin, f"sqlite:///{tmp / name}.db", tmp)
        app = registry.build(s)
        t = twin.agent_transport(s, name, availability_will(app.contract, name))
        agent = Agent(s, app, transport=t, store=open_store(s.db_url))
        await agent.start()
        out.append(agent)
    return out


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@example(back=[0], runs=[(125, 65), (124, 60)])  # found by hypothesis: a day joining a long run
@given(
    back=st.lists(st.integers(min_value=0, max_value=420), min_size=1, max_size=25, unique=True),
    runs=st.lists(st.tuples(st.integers(0, 300), st.integers(62, 75)), max_size=2),
)
def test_streaks_from_a_window_equal_streaks_from_everything(
    back: list[int], runs: list[tuple[int, int]]
) -> None:
    """Current, per-day and best streaks of an item, completed on days `back` days ago (and
    long runs that outgrow the first window), as the pure rules compute them on all days."""
    for start, length in runs:
        back = list(dict.fromkeys([*back, *range(start, start + length)]))

    async def scenario() -> None:
        twin = InMemoryBroker()
        agents = await _agents(twin, Path(tempfile.mkdtemp()))
        try:
            async with client_for(twin, contract()) as c:
                for b in back:
                    at = TODAY - dt.timedelta(days=b)
                    req = TimelineCompleteRequest(user_id="h", item_code="walk", completed_at=at)
                    r = await c.request("timeline_complete", req)
                    assert r.success, r.error
                done = {TODAY.date() - dt.timedelta(days=b) for b in back}
                today = await c.request("timeline_get", TimelineGetRequest(user_id="h"))
                (walk,) = [i for i in today.timeline.items if i.code == "walk"]
                assert walk.current_streak == days.current_streak(done, TODAY.date())
                assert walk.best_streak == days.longest_run(done)
                probe = TODAY.date() - dt.timedelta(days=back[len(back) // 2])
                past = await c.request("timeline_get", TimelineGetRequest(user_id="h", date=probe))
                (walk,) = [i for i in past.timeline.items if i.code == "walk"]
                assert walk.current_streak == days.run_ending_at(done, probe) and walk.done
        finally:
            for agent in reversed(agents):
                await agent.stop()

    asyncio.run(scenario())
