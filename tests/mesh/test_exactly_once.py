"""Exactly once beyond kills (#16): keyless requests, transient failures, broker snapshots,
a full disk, a locked database, bounded growth, events a subscriber missed."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import sqlite3
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lifeops_contract import contract
from lifeops_contract.schemas import (
    ActivityLogReply,
    ActivityLogRequest,
    CharacterGetRequest,
    CharacterReply,
    EventsRecentRequest,
    TimelineCompleteRequest,
)
from lifeops_mesh.broker import local_broker
from lifeops_mesh.processes import agent_process
from mesh import (
    Agent,
    AgentApp,
    Context,
    ErrorInfo,
    ErrorReply,
    MeshClient,
    Route,
    codec,
)
from mesh.broker.process import MosquittoProcess
from mesh.receipts import is_transient_reply
from mesh.retention import Retention, prune
from mesh.testing.brokers import BrokerUnderTest, client_for
from mesh.testing.mqtt_cli import MosquittoCli
from mesh.testing.wait import eventually
from tests.conftest import StartAgent, StartApp, user


async def _total(c: MeshClient, uid: str) -> int:
    reply = await c.request("character_get", CharacterGetRequest(user_id=uid))
    return int(reply.total_xp or 0)


async def test_keyless_requests_are_counted_once_per_request(
    mesh_broker: BrokerUnderTest, start_agent: StartAgent, db_url: str
) -> None:
    """No activity_id, no source_ref: a request is identified by its correlation data and
    payload, so its retry counts once and two requests count twice; an identical
    bare publish repeated counts once (documented trade-off)."""
    uid = user()
    body = codec.encode(ActivityLogRequest(user_id=uid, activity_type="reading"))
    async with (
        start_agent("stats", mesh_broker, db_url) as stats,
        client_for(mesh_broker, contract()) as c,
    ):
        t = c.transport
        for cid in (b"one", b"one", b"two"):  # a request, its retry, another request
            await t.publish(
                "stats/activities/log", body, response_topic=f"reply/tester/{uid}",
                correlation_data=cid,
            )  # fmt: skip
        for _ in range(3):
            await t.publish("stats/activities/log", body)  # bare, no reply asked

        async def three_grants() -> bool:
            return await _total(c, uid) == 90

        await eventually(three_grants, what="30 XP for each of three requests")
        await asyncio.sleep(0.3)
        assert await _total(c, uid) == 90
        assert stats.metrics.total("mesh_duplicates_skipped_total") == 3


async def test_a_retry_to_a_corrected_response_topic_is_the_same_request(
    broker: MosquittoProcess, start_agent: StartAgent, db_url: str
) -> None:
    """The `tester` account sends a keyless request with a reply topic it cannot read
    (`reply/alice/1`: the answer is lost), then retries with `mosquitto_rr` to its own
    (`reply/tester/1`) and the same correlation data: one grant, and the retry gets the
    original reply marked as a duplicate. A second identical request with new correlation data
    (the same thing done twice on purpose) counts again."""
    uid, cli = user(), MosquittoCli(broker)
    body = json.dumps({"user_id": uid, "activity_type": "reading"})
    corr = ["-D", "publish", "correlation-data"]
    async with (
        start_agent("stats", broker, db_url) as stats,
        MeshClient(broker.url("tester"), contract()) as c,
    ):
        lost = await cli.pub(
            "stats/activities/log", body,
            extra=["-D", "publish", "response-topic", "reply/alice/1", *corr, "attempt-1"],
        )  # fmt: skip
        assert lost.returncode == 0, lost.stderr
        await eventually(lambda: _equals(_total(c, uid), 30), what="the first attempt's grant")
        retry = await cli.rr(
            "stats/activities/log", body, response_topic="reply/tester/1",
            extra=[*corr, "attempt-1"],
        )  # fmt: skip
        assert retry.returncode == 0, retry.stderr
        first = json.loads(retry.lines[-1])
        assert first["duplicate"] is True
        assert sum(first["xp_granted"].values()) == 30
        assert await _total(c, uid) == 30
        assert stats.metrics.total("mesh_duplicates_skipped_total") == 1

        again = await cli.rr(
            "stats/activities/log", body, response_topic="reply/tester/1",
            extra=[*corr, "attempt-2"],
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        second = json.loads(again.lines[-1])
        assert not second.get("duplicate") and sum(second["xp_granted"].values()) == 30
        assert second["activity_id"] != first["activity_id"]
        assert await _total(c, uid) == 60


async def test_a_retry_without_correlation_data_to_a_corrected_topic_is_the_same_request(
    broker: MosquittoProcess, start_agent: StartAgent, db_url: str
) -> None:
    """mosquitto_rr's default sends no correlation data: the request is its canonical payload,
    so the retry with a corrected response topic (and keys in another order) is recognised."""
    uid, cli = user(), MosquittoCli(broker)
    async with (
        start_agent("stats", broker, db_url),
        MeshClient(broker.url("tester"), contract()) as c,
    ):
        lost = await cli.pub(
            "stats/activities/log", json.dumps({"user_id": uid, "activity_type": "reading"}),
            extra=["-D", "publish", "response-topic", "reply/alice/2"],
        )  # fmt: skip
        assert lost.returncode == 0, lost.stderr
        await eventually(lambda: _equals(_total(c, uid), 30), what="the first attempt's grant")
        retry = await cli.rr(
            "stats/activities/log", json.dumps({"activity_type": "reading", "user_id": uid}),
            response_topic="reply/tester/2",
        )  # fmt: skip
        assert retry.returncode == 0, retry.stderr
        assert json.loads(retry.lines[-1])["duplicate"] is True
        assert await _total(c, uid) == 30


def _transient_then_fine(failures: int) -> tuple[AgentApp, list[int]]:
    """A Stats that answers activity_completed with a transient error `failures` times."""
    calls: list[int] = []

    async def completed(ctx: Context, ev: ActivityLogRequest) -> ActivityLogReply:
        calls.append(1)
        if len(calls) <= failures:
            raise RuntimeError("the database fell over")
        return ActivityLogReply(activity_id=ev.activity_id, xp_granted={"DEX": 1}, message="ok")

    async def character(ctx: Context, req: CharacterGetRequest) -> CharacterReply:
        return CharacterReply(total_xp=len(calls))

    routes = [Route("activity_completed", completed, dedup=lambda ev: f"a:{ev.activity_id}"),
              Route("character_get", character)]  # fmt: skip
    return AgentApp(name="stats", contract=contract(), routes=routes), calls


async def test_a_transient_error_is_no_receipt(
    mesh_broker: BrokerUnderTest,
    start_app: StartApp,
    start_agent: StartAgent,
    new_db: Callable[[], str],
) -> None:
    """Stats answering internal_error (a bug, its database) is not a final answer: LifeOps
    keeps the record pending and sends it again, until a real answer is stored."""
    app, calls = _transient_then_fine(failures=2)
    uid = user()
    async with (
        start_app(app, mesh_broker, new_db()),
        start_agent("lifeops", mesh_broker, new_db()) as lifeops,
        client_for(mesh_broker, contract()) as c,
    ):
        done = await c.request(
            "timeline_complete", TimelineCompleteRequest(user_id=uid, item_code="walk")
        )
        assert done.success

        async def settled() -> bool:
            return (await lifeops.receipts.pending())[0] == 0

        await eventually(settled, timeout=20, what="the receipt after two transient errors")
        # (a failing handler in a batch is run once more alone before the error is answered)
        assert len(calls) == 3
        assert lifeops.metrics.total("mesh_receipts_transient_total") == 1


async def test_retained_state_converges_after_a_broker_restores_an_old_snapshot(
    tmp_path: Path, start_agent: StartAgent, db_url: str
) -> None:
    """Mosquitto saving every 2 s: one activity (70), a save, another (140), SIGKILL before
    the next save, restart: the restored snapshot still holds Stats' session, yet the retained
    sheet says 140 again (the agent reads its states back after every connect)."""
    broker = local_broker(tmp_path / "broker", overrides={"autosave_interval": "2"})
    broker.start()
    try:
        async with start_agent("stats", broker, db_url) as stats:
            uid = user()
            async with MeshClient(broker.url("tester"), contract()) as c:
                gym = ActivityLogRequest(user_id=uid, activity_type="gym_session")
                await c.request("activities_log", gym)
                await _retained_total(broker, uid, 70)
                await asyncio.sleep(4.5)  # saved
                await c.request("activities_log", gym)
                await _retained_total(broker, uid, 140)
            broker.kill()
            broker.start()
            await stats.transport.wait_connected(20)
            assert await _retained_total(broker, uid, 140)
    finally:
        broker.kill()


async def _retained_total(broker: MosquittoProcess, uid: str, want: int) -> bool:
    async def probe() -> bool:
        sub = await MosquittoCli(broker).sub(f"stats/character/{uid}", count=1, wait_s=2)
        got = await sub.result()
        return (
            bool(got.stdout)
            and codec.decode(got.stdout.strip(), dict[str, object])["total_xp"] == want
        )

    return await eventually(probe, timeout=20, interval=0.2, what=f"retained total {want}")


def _readings(uid: str, n: int) -> list[ActivityLogRequest]:
    return [
        ActivityLogRequest(user_id=uid, activity_type="reading", source_ref=f"{uid}-{i}")
        for i in range(n)
    ]


@contextlib.contextmanager
def tiny_disk(path: Path, size: str = "2M") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a tmpfs mount (root); run the suite as root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as fh:
        while True:
            fh.write(b"\0" * 65536)
    return filler


async def test_a_full_disk_holds_messages_until_there_is_room(
    broker: MosquittoProcess, start_agent: StartAgent, tmp_path: Path
) -> None:
    """Stats' database on a full disk: commits fail, the requests wait un-acknowledged (no
    dead letter, no internal_error), health says why; room again: every one counts once."""
    with tiny_disk(tmp_path / "disk") as disk:
        db = f"sqlite:///{disk / 'stats.db'}"
        async with start_agent("stats", broker, db) as stats:
            uid = user()
            async with MeshClient(broker.url("tester"), contract()) as c:
                await c.request(
                    "activities_log", ActivityLogRequest(user_id=uid, activity_type="reading")
                )
                filler = _fill(disk)
                reqs = _readings(uid, 20)
                pending = [
                    asyncio.ensure_future(c.request("activities_log", r, timeout=60)) for r in reqs
                ]

                async def full() -> bool:
                    return "cannot commit" in (await stats.health()).checks["database"].detail

                await eventually(full, timeout=20, what="the database reported full")
                await asyncio.sleep(1)
                assert not any(p.done() for p in pending)
                filler.unlink()
                replies = await asyncio.gather(*pending)
            assert all(r.success and not r.duplicate for r in replies)
            assert stats.metrics.total("mesh_dead_letters_total") == 0
            async with MeshClient(broker.url("tester"), contract()) as c:
                assert await _total(c, uid) == 30 * 21


async def test_a_locked_database_holds_messages_until_it_is_free(
    broker: MosquittoProcess, start_agent: StartAgent, tmp_path: Path
) -> None:
    """Another process holds SQLite's write lock past busy_timeout (5 s): commits wait and
    retry, health says why (its own probe only reads, so it is not stuck behind the lock),
    nothing is refused or dead-lettered; when the lock goes, every request counts once."""
    path = tmp_path / "stats.db"
    async with start_agent("stats", broker, f"sqlite:///{path}") as stats:
        uid = user()
        locker = sqlite3.connect(path, timeout=1, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            async with MeshClient(broker.url("tester"), contract()) as c:
                reqs = _readings(uid, 5)
                pending = [
                    asyncio.ensure_future(c.request("activities_log", r, timeout=60)) for r in reqs
                ]

                async def held() -> bool:
                    return "locked" in (await stats.health()).checks["database"].detail

                await eventually(held, timeout=15, what="health saying the database is locked")
                assert not any(p.done() for p in pending)
                locker.execute("ROLLBACK")
                replies = await asyncio.gather(*pending)
                assert all(r.success for r in replies)
                assert await _total(c, uid) == 150
        finally:
            locker.close()
        assert stats.metrics.total("mesh_dead_letters_total") == 0
        assert stats.metrics.total("mesh_store_retries_total") > 0


async def test_pruning_keeps_growth_bounded(
    broker: MosquittoProcess, start_agent: StartAgent, db_url: str
) -> None:
    """Dedup keys, delivered events and dead letters older than their window are pruned (and
    counted); the dead letters beyond the cap go oldest first; a repeat older than the dedup
    window still counts once (Stats knows its activities by source_ref)."""
    async with start_agent("stats", broker, db_url) as stats:
        uid = user()
        async with MeshClient(broker.url("tester"), contract()) as c:
            req = ActivityLogRequest(user_id=uid, activity_type="gym_session", source_ref=uid)
            await c.request("activities_log", req)
            for n in range(5):
                await c.request(
                    "activities_log", ActivityLogRequest(user_id=uid, activity_type=f"x{n}")
                )
            later = dt.datetime.now(dt.UTC) + dt.timedelta(days=40)
            pruned = await prune(stats.store, Retention(max_dead_letters=2), stats.metrics, later)
            assert pruned["mesh_inbox"] >= 1 and pruned["mesh_outbox"] >= 1
            assert pruned["mesh_dead_letters"] == 5
            again = await c.request("activities_log", req)
            assert again.duplicate and await _total(c, uid) == 70
        assert stats.metrics.total("mesh_pruned_rows_total") == sum(pruned.values())


async def test_missed_events_can_be_caught_up(stats: Agent, tester: MeshClient) -> None:
    """stats/events/recent lists a user's level-ups and achievements since a time."""
    uid = user()
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    await tester.request(
        "activities_log", ActivityLogRequest(user_id=uid, activity_type="gym_session")
    )
    events = await tester.request("events_recent", EventsRecentRequest(user_id=uid, since=start))
    assert [e.event_id for e in events.levelups] == [f"lvl:{uid}:STR:2", f"lvl:{uid}:character:2"]
    assert [a.achievement_code for a in events.achievements] == ["first_activity"]
    later = await tester.request(
        "events_recent", EventsRecentRequest(user_id=uid, since=dt.datetime.now(dt.UTC))
    )
    assert later.levelups == [] and later.achievements == []


def test_error_replies_say_whether_to_try_again() -> None:
    """A refusal is final (transient false); a bug or an unavailable database is not."""
    refusal = ErrorReply(error=ErrorInfo(code="not_found", message="no"))
    assert codec.decode(codec.encode(refusal), dict[str, Any])["error"]["transient"] is False

    assert not is_transient_reply(refusal)
    assert is_transient_reply(ErrorReply(error=ErrorInfo(code="internal_error", message="bug")))
    assert is_transient_reply(ErrorReply(error=ErrorInfo(code="x", message="y", transient=True)))
    assert not is_transient_reply(ActivityLogReply())


async def test_an_identical_keyless_message_counts_again_after_the_keyless_window(
    mesh_broker: BrokerUnderTest, start_agent: StartAgent, db_url: str
) -> None:
    """The same keyless publish (or `mosquitto_rr` command) within the window is a retry;
    after it, an activity of its own: running the example again tomorrow grants XP again."""
    uid = user()
    body = codec.encode(ActivityLogRequest(user_id=uid, activity_type="reading"))
    async with (
        start_agent("stats", mesh_broker, db_url, keyless_window_s=1.0),
        client_for(mesh_broker, contract()) as c,
    ):
        await c.transport.publish("stats/activities/log", body)
        await c.transport.publish("stats/activities/log", body)
        await eventually(lambda: _equals(_total(c, uid), 30), what="one grant")
        await asyncio.sleep(1.2)
        await c.transport.publish("stats/activities/log", body)
        await eventually(lambda: _equals(_total(c, uid), 60), what="a second grant")
        await asyncio.sleep(0.3)
        assert await _total(c, uid) == 60


async def test_a_redelivery_after_a_crash_counts_once_whatever_the_keyless_window(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    """Stats dies after committing a keyless publish, before its PUBACK, and comes back past
    the keyless window (0 here): the broker redelivers with DUP set, which is still the same
    message."""
    db = f"sqlite:///{tmp_path / 'stats.db'}"
    uid = user()
    instance = uid[-6:]
    env = {"LIFEOPS_KEYLESS_WINDOW_S": "0"}
    crashing = agent_process(
        "stats", broker.url("stats"), db, data_dir=tmp_path, instance=instance,
        env={**env, "LIFEOPS_FAILPOINT": "exit_after_commit:1"},
    )  # fmt: skip
    crashing.start()
    async with MeshClient(broker.url("tester"), contract()) as c:
        body = codec.encode(ActivityLogRequest(user_id=uid, activity_type="reading"))
        await c.transport.publish("stats/activities/log", body)
        assert await asyncio.to_thread(crashing.wait, 20) == 137
        again = agent_process(
            "stats", broker.url("stats"), db, data_dir=tmp_path, instance=instance, env=env
        )
        again.start()
        try:
            await eventually(lambda: _equals(_total(c, uid), 30), timeout=15, what="one grant")
            await asyncio.sleep(1)
            assert await _total(c, uid) == 30
        finally:
            again.stop()


async def _equals(value: Awaitable[int], want: int) -> bool:
    return await value == want
