"""Batch-native handlers: a group commit costs a fixed number of statements, whatever its size,
and completions that land in one batch see each other.

The statement counts come from the real handlers on a real SQLite store (each `Tx` statement
counted where it reaches the backend); the streaks from the real LifeOps and Stats on the
in-memory twin, with many completions in flight at once so that they share batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from lifeops_agent import days
from lifeops_contract import contract
from lifeops_contract.schemas import (
    ActivityLogRequest,
    CharacterGetRequest,
    OuraScores,
    OuraSynced,
    TimelineCompleteRequest,
    TimelineGetRequest,
)
from mesh import Agent, Context, Inbound, Job
from mesh.store import Tx
from mesh.testing.brokers import InMemoryBroker, client_for
from tests.lifeops_agent.test_history import _agents

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)


TWIN = "twin"


@pytest.fixture
async def agents(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    twin = InMemoryBroker()
    started = await _agents(twin, tmp_path)
    try:
        yield {TWIN: twin, **{a.name: a for a in started}}
    finally:
        for agent in reversed(started):
            await agent.stop()


@contextlib.contextmanager
def _count(tx: Tx) -> Iterator[list[str]]:
    """Every statement `tx` sends to the database inside the block (an executemany counts
    once), as "VERB table" (or "SELECT first-column")."""
    sent: list[str] = []
    names = ("_run", "_run_many", "_fetchone", "_fetchall")
    for name in names:
        real = getattr(tx, name)

        async def counted(sql: str, args: Any, _real: Any = real) -> Any:
            sent.append(sql.split()[0] + " " + sql.split()[2 if sql.startswith("INSERT") else 1])
            return await _real(sql, args)

        setattr(tx, name, counted)
    try:
        yield sent
    finally:
        for name in names:  # the store may hand the same Tx to the next transaction
            delattr(tx, name)


async def _statements(agent: Agent, key: str, payloads: list[Any]) -> list[str]:
    """Run `key`'s batch handler over `payloads` in one transaction, as the inbox does."""
    (route,) = [r for r in agent.app.routes if r.key == key]
    assert route.batch is not None, f"{key} is not batch-native"
    async with agent.store.transaction() as tx:
        with _count(tx) as sent:
            jobs = [
                Job(
                    Context(
                        tx=tx,
                        agent=agent.name,
                        contract=agent.app.contract,
                        msg=Inbound(topic=key, payload=b"{}", qos=1),
                        params={},
                        trace_id=f"t{i}",
                        relay=agent.relay,
                        receipts=agent.receipts,
                    ),
                    p,
                )
                for i, p in enumerate(payloads)
            ]
            await route.batch(jobs)
            await tx.flush()
            errors = [j.error for j in jobs if j.error is not None or j.reply is None]
            assert not errors, errors
            assert all(getattr(j.reply, "success", True) for j in jobs)
    return list(sent)


@pytest.mark.parametrize("size", [40, 200])
async def test_a_batch_costs_the_statements_of_one(agents: dict[str, Any], size: int) -> None:
    """LifeOps' completions and Stats' activities: a batch of `size` messages of as many users
    sends as many statements as a batch of one."""
    lifeops, stats = agents["lifeops"], agents["stats"]

    def completions(tag: str, n: int) -> list[TimelineCompleteRequest]:
        return [
            TimelineCompleteRequest(user_id=f"{tag}{i}", item_code="walk", completed_at=NOW)
            for i in range(n)
        ]

    one = await _statements(lifeops, "timeline_complete", completions(f"a{size}", 1))
    many = await _statements(lifeops, "timeline_complete", completions(f"b{size}", size))
    assert len(many) == len(one), (one, many)

    def activities(tag: str, n: int) -> list[ActivityLogRequest]:
        return [
            ActivityLogRequest(user_id=f"{tag}{i}", activity_type="reading", source_ref=f"{tag}{i}")
            for i in range(n)
        ]

    one = await _statements(stats, "activities_log", activities(f"sa{size}", 1))
    many = await _statements(stats, "activities_log", activities(f"sb{size}", size))
    assert len(many) == len(one), (one, many)

    def oura(tag: str, n: int) -> list[OuraSynced]:
        scores = OuraScores(sleep=80, readiness=70)
        return [OuraSynced(user_id=f"{tag}{i}", date=NOW.date(), scores=scores) for i in range(n)]

    one = await _statements(stats, "oura_synced", oura(f"so{size}", 1))
    many = await _statements(stats, "oura_synced", oura(f"sp{size}", size))
    assert len(many) == len(one), (one, many)


async def test_completions_in_flight_together_give_the_rules_streaks(
    agents: dict[str, Any],
) -> None:
    """Forty days of one user completed all at once, in scrambled order (past days filling
    gaps inside one batch), plus other users between them: every streak is what the rules say
    of those days, and each completion counted once."""
    back = [(i * 17) % 43 for i in range(40)]  # 40 distinct days within the last 43
    async with client_for(agents[TWIN], contract()) as c:

        async def complete(user: str, b: int) -> Any:
            req = TimelineCompleteRequest(
                user_id=user, item_code="walk", completed_at=NOW - dt.timedelta(days=b)
            )
            return await c.request("timeline_complete", req)

        replies = await asyncio.gather(
            *(complete("crowd", b) for b in back), *(complete(f"other{b}", b) for b in back)
        )
        assert all(r.success for r in replies), [r.error for r in replies if not r.success]
        again = await asyncio.gather(*(complete("crowd", b) for b in back[:10]))
        assert all(r.error and r.error.code == "already_completed" for r in again)
        done = {NOW.date() - dt.timedelta(days=b) for b in back}
        got = await c.request("timeline_get", TimelineGetRequest(user_id="crowd"))
        (walk,) = [i for i in got.timeline.items if i.code == "walk"]
        assert walk.current_streak == days.current_streak(done, NOW.date())
        assert walk.best_streak == days.longest_run(done)
        assert len({r.activity_id for r in replies}) == len(replies)
        assert max(r.new_streak for r in replies[: len(back)]) <= days.longest_run(done)
        sheet = await c.request("character_get", CharacterGetRequest(user_id="crowd"))
        assert sheet.character.activities == len(back)  # each completion reached Stats once
