"""User ids equal after folding case and `-`/`_` are one person's: the first spelling an agent
stores holds them, another is refused on its first request (error reply and dead letter naming
both), also between two instances at the same moment; existing ids keep working."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from typing import Any, cast

import pytest

from lifeops_contract import contract, user_registry
from lifeops_contract.ids import fold_user_id
from lifeops_contract.schemas import (
    ActivityLogReply,
    ActivityLogRequest,
    CharacterGetRequest,
    TimelineCompleteRequest,
    UserSettingsRequest,
)
from mesh import Migration, Tx, codec, open_store
from mesh.broker.process import MosquittoProcess
from mesh.client import MeshClient
from mesh.schemas import DeadLetter
from mesh.testing.recorder import Recorder
from mesh.testing.wait import eventually
from stats_agent.repository import EXISTING_USERS
from stats_agent.repository import MIGRATIONS as STATS_MIGRATIONS
from tests.conftest import StartAgent, user


def test_folding_is_case_and_dash_underscore() -> None:
    assert fold_user_id("Run-Club") == fold_user_id("run_club") == fold_user_id("RUN_CLUB")
    assert fold_user_id("alice") == fold_user_id("Alice") != fold_user_id("alice2")
    assert fold_user_id("runclub") != fold_user_id("run-club")  # only case and -/_ fold


async def _log(c: MeshClient, uid: str) -> ActivityLogReply:
    reply: ActivityLogReply = await c.request(
        "activities_log", ActivityLogRequest(user_id=uid, activity_type="reading"), timeout=20
    )
    return reply


async def _dead_letter(rec: Recorder, topic: str, uid: str) -> DeadLetter:
    async def found() -> list[DeadLetter]:
        letters = [codec.decode(m.payload, DeadLetter) for m in rec.on(topic)]
        return [d for d in letters if d.error.code == "user_id_taken" and uid in d.error.message]

    return (await eventually(found, what=f"the dead letter refusing {uid}"))[0]


async def test_stats_refuses_another_spelling_of_a_stored_user(
    broker: MosquittoProcess, start_agent: StartAgent, db_url: str
) -> None:
    """`run-club` logs first; `Run_Club` and `RUN-CLUB` are refused (error reply, dead letter
    naming both ids), grant nothing, and `run-club` keeps working."""
    base = user()
    first, others = f"{base}-run-club", [f"{base.upper()}_Run_Club", f"{base}-RUN-CLUB"]
    async with (
        start_agent("stats", broker, db_url) as stats,
        Recorder(broker, ["mesh/dlq/stats"]) as rec,
        MeshClient(broker.url("tester"), contract()) as c,
    ):
        assert (await _log(c, first)).success
        for other in others:
            reply = await _log(c, other)
            assert not reply.success and reply.error is not None
            assert reply.error.code == "user_id_taken"
            assert repr(other) in reply.error.message and repr(first) in reply.error.message
            letter = await _dead_letter(rec, "mesh/dlq/stats", other)
            assert repr(first) in letter.error.message
        assert (await _log(c, first)).success
        sheet = await c.request("character_get", CharacterGetRequest(user_id=first))
        assert sheet.total_xp == 60
        async with stats.store.read() as tx:
            rows = await tx.fetchall(
                "SELECT user_id FROM stats_characters WHERE user_id LIKE ?", f"%{base[1:]}%"
            )
        assert [r[0] for r in rows] == [first]


async def test_two_stats_instances_cannot_both_create_one_persons_two_spellings(
    broker: MosquittoProcess, start_agent: StartAgent, db_url: str
) -> None:
    """Two instances behind a shared subscription get `alice` and `Alice` (20 such pairs) at the
    same moment: for each pair exactly one spelling gets a character, the other is refused."""
    pairs = [(f"{u}-a", f"{u.upper()}_A") for u in (user() for _ in range(20))]
    async with contextlib.AsyncExitStack() as stack:
        agents = [
            await stack.enter_async_context(start_agent("stats", broker, db_url, share_group="st"))
            for _ in range(2)
        ]
        await asyncio.sleep(0.2)
        c = await stack.enter_async_context(MeshClient(broker.url("tester"), contract()))
        replies = await asyncio.gather(*(_log(c, uid) for pair in pairs for uid in pair))
        handled = [a.metrics.total("mesh_messages_received_total") for a in agents]
        async with agents[0].store.read() as tx:
            rows = await tx.fetchall("SELECT user_id FROM stats_characters")
    stored = {r[0] for r in rows}
    for n, (low, high) in enumerate(pairs):
        got = [replies[2 * n], replies[2 * n + 1]]
        assert sorted(r.success for r in got) == [False, True], got
        refused = next(r for r in got if not r.success)
        assert refused.error is not None and refused.error.code == "user_id_taken"
        assert len(stored & {low, high}) == 1
    assert all(h > 0 for h in handled), f"one instance did all the work: {handled}"


async def test_lifeops_refuses_another_spelling_of_a_stored_user(
    broker: MosquittoProcess, start_agent: StartAgent, new_db: Any
) -> None:
    """LifeOps: `Alice` completes an item first; `alice` is refused for a completion and for
    settings (error reply, dead letter naming both), and `Alice` keeps working."""
    base = user()
    first, other = f"{base}-Alice", f"{base}-alice"
    async with (
        start_agent("stats", broker, new_db()),
        start_agent("lifeops", broker, new_db()),
        Recorder(broker, ["mesh/dlq/lifeops"]) as rec,
        MeshClient(broker.url("tester"), contract()) as c,
    ):
        done = await c.request(
            "timeline_complete", TimelineCompleteRequest(user_id=first, item_code="walk")
        )
        assert done.success
        refused = await c.request(
            "timeline_complete", TimelineCompleteRequest(user_id=other, item_code="walk")
        )
        assert not refused.success and refused.error is not None
        assert refused.error.code == "user_id_taken" and repr(first) in refused.error.message
        await _dead_letter(rec, "mesh/dlq/lifeops", other)
        settings = await c.request(
            "user_settings", UserSettingsRequest(user_id=other, timezone="Europe/Berlin")
        )
        assert settings.error is not None and settings.error.code == "user_id_taken"
        ok = await c.request(
            "user_settings", UserSettingsRequest(user_id=first, timezone="Europe/Berlin")
        )
        assert ok.error is None


async def test_users_stored_before_the_registry_keep_the_older_spelling(
    broker: MosquittoProcess, start_agent: StartAgent, db_url: str
) -> None:
    """A Stats database from before the registry holds `bob` (older) and `Bob`: on upgrade
    `bob` keeps working, `Bob` is refused from then on (its data stays), and an unrelated
    existing user is untouched."""
    base = user()
    older, newer, other = f"{base}-bob", f"{base}-Bob", f"{base}-carol"
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    store = open_store(db_url)
    async with store:
        await store.migrate("stats", STATS_MIGRATIONS)
        async with store.transaction() as tx:
            for n, uid in enumerate((newer, older, other)):
                at = (t0 + dt.timedelta(days=2 - n)).isoformat()  # older: day 1, newer: day 2
                await tx.execute(
                    "INSERT INTO stats_characters (user_id, total_xp, activities, created_at,"
                    " updated_at) VALUES (?, 10, 1, ?, ?)",
                    uid, at, at,
                )  # fmt: skip
    async with (
        start_agent("stats", broker, db_url),
        MeshClient(broker.url("tester"), contract()) as c,
    ):
        assert (await _log(c, older)).success
        assert (await _log(c, other)).success
        refused = await _log(c, newer)
        assert refused.error is not None and refused.error.code == "user_id_taken"
        assert repr(older) in refused.error.message
        kept = await c.request("character_get", CharacterGetRequest(user_id=newer))
        assert kept.total_xp == 10


def test_the_registry_migrations_name_their_own_component() -> None:
    """Its own migration component: the agents' version numbers stay theirs."""
    steps = user_registry.migrations(EXISTING_USERS)
    assert user_registry.COMPONENT == "user_ids"
    assert [m.version for m in steps] == [1, 2] and all(isinstance(m, Migration) for m in steps)
    assert json.dumps([m.sql for m in steps])  # plain SQL, the same on both backends


@pytest.mark.parametrize("users", ["Alice,alice", "run-club, run_club"])
def test_the_ha_bridge_refuses_two_spellings_at_configuration(users: str) -> None:
    from ha_bridge.agent import BridgeConfig
    from mesh import ConfigError

    with pytest.raises(ConfigError, match="LIFEOPS_HA_USERS"):
        BridgeConfig.from_env({"LIFEOPS_HA_USERS": users})
    assert BridgeConfig.from_env({"LIFEOPS_HA_USERS": "alice,bob"}).users == ("alice", "bob")


class _Counting:
    """A transaction that counts the statements sent through it."""

    def __init__(self, tx: Tx) -> None:
        self.tx, self.statements = tx, 0

    async def fetchall(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        self.statements += 1
        return await self.tx.fetchall(sql, *args)


async def test_known_users_cost_no_statement_and_a_rollback_forgets(db_url: str) -> None:
    """The registry's cost on the hot path: a batch of new users is one SELECT and one INSERT,
    users seen committed are remembered (no statement at all); users recorded by a transaction
    that rolls back are not remembered, so the next one records them again."""
    now = dt.datetime.now(dt.UTC)
    store = open_store(db_url)
    async with store:
        await user_registry.install(store, "SELECT 'x' AS user_id, '' AS seen WHERE 1 = 0")
        registry = user_registry.UserRegistry()
        ids = [f"{user()}-{n}" for n in range(50)]
        costs = []
        for _ in range(3):
            async with store.transaction() as tx:
                counting = _Counting(tx)
                assert await registry.admit(cast(Tx, counting), ids, now) == {}
                costs.append(counting.statements)
        assert costs == [2, 1, 0]  # record; find them committed; remembered

        spelled = [u.upper() for u in ids[:3]]
        async with store.transaction() as tx:
            refused = await registry.admit(tx, [*spelled, ids[0]], now)
        assert refused == dict(zip(spelled, ids[:3], strict=True))

        fresh = [f"{user()}-r{n}" for n in range(5)]
        with contextlib.suppress(RuntimeError):
            async with store.transaction() as tx:
                await registry.admit(tx, fresh, now)
                assert await registry.admit(tx, fresh, now) == {}  # seen, but not committed
                raise RuntimeError("roll back")
        async with store.transaction() as tx:
            counting = _Counting(tx)
            assert await registry.admit(cast(Tx, counting), fresh, now) == {}
            assert counting.statements == 2  # recorded again
        async with store.read() as tx:
            rows = await tx.fetchall("SELECT COUNT(*) FROM user_ids")
        assert rows[0][0] == len(ids) + len(fresh)
