"""An Oura day's identity as columns (user_id, day, revision): a database of the schema before
(the day and revision only inside source_ref) migrates, and Stats reads the columns."""

from __future__ import annotations

import datetime as dt

from lifeops_contract import contract
from lifeops_contract.schemas import ActivityLogReply, OuraScores, OuraSynced
from mesh import codec, open_store
from mesh.testing.brokers import InMemoryBroker, client_for
from stats_agent import repository
from tests.conftest import StartAgent

DAY = dt.date(2026, 1, 1)
OLD = [  # activity_id, user_id, activity_type, source, source_ref, xp
    ("a1", "alice", "oura_daily", "lifeops", "oura:alice:2026-01-01", {"WIS": 24}),
    ("a2", "alice", "oura_daily", "lifeops", "oura:alice:2026-01-01:rev2", {"WIS": 3}),
    ("a3", "run_club-7", "oura_daily", "lifeops", "oura:run_club-7:2026-01-02:rev11", {"STA": 1}),
    # not versions of an Oura day, whatever their refs look like
    ("a4", "oura", "walk", "lifeops", "oura:walk:2026-01-01", {"STA": 5}),
    ("a5", "bob", "reading", "manual", "oura:bob:2026-01-01", {"INT": 30}),
]


async def _old_database(db_url: str) -> None:
    async with open_store(db_url) as store:
        await store.migrate("stats", repository.MIGRATIONS[:3])
        async with store.transaction() as tx:
            for aid, uid, kind, source, ref, xp in OLD:
                reply = ActivityLogReply(activity_id=aid, xp_granted=xp, message="then")
                await tx.execute(
                    "INSERT INTO stats_activities (activity_id, user_id, activity_type, source,"
                    " source_ref, activity_time, xp, reply, created_at)"
                    " VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?)",
                    aid, uid, kind, source, ref, codec.encode(xp).decode(),
                    codec.encode(reply).decode(), "2026-01-02T00:00:00+00:00",
                )  # fmt: skip


async def test_an_old_database_gets_its_oura_days_as_columns(
    db_url: str, start_agent: StartAgent
) -> None:
    """Migration 4 fills (day, revision) from source_ref for Oura days only; then a repeat of
    a stored version is recognised by the columns and a new revision grants only what it adds
    to the versions stored before the upgrade."""
    await _old_database(db_url)
    async with open_store(db_url) as store:
        assert await store.migrate("stats", repository.MIGRATIONS) == 4
        async with store.read() as tx:
            rows = await tx.fetchall(
                "SELECT activity_id, day, revision FROM stats_activities ORDER BY activity_id"
            )
            versions = await repository.oura_versions(tx, [("alice", DAY)])
    assert [tuple(r) for r in rows] == [
        ("a1", "2026-01-01", 0),
        ("a2", "2026-01-01", 2),
        ("a3", "2026-01-02", 11),
        ("a4", None, None),
        ("a5", None, None),
    ]
    assert sorted((v.revision, v.xp) for v in versions) == [(0, {"WIS": 24}), (2, {"WIS": 3})]

    twin = InMemoryBroker()
    async with start_agent("stats", twin, db_url), client_for(twin, contract(), "lifeops") as c:
        again = await c.request(
            "oura_synced",
            OuraSynced(user_id="alice", date=DAY, scores=OuraScores(sleep=90), revision=2),
        )
        assert again.duplicate and again.activity_id == "a2" and again.message == "then"
        better = await c.request(
            "oura_synced",
            OuraSynced(user_id="alice", date=DAY, scores=OuraScores(sleep=100), revision=3),
        )
        assert better.success and better.xp_granted == {"WIS": 3}  # 30, of which 27 given
