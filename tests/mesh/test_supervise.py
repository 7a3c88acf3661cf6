"""Supervised background work (#22): every long-lived task survives any exception per item and
per cycle, counts it, retries with backoff, and health names it while it fails; an error is an
outage only when the driver says so about the connection; a poison message is dead-lettered
after a bounded number of tries while the others go on."""

from __future__ import annotations

import asyncio
import errno
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from lifeops_contract import contract
from lifeops_contract.schemas import (
    ActivityLogReply,
    ActivityLogRequest,
    CharacterGetRequest,
    TimelineCompleteRequest,
)
from lifeops_mesh import registry
from mesh import (
    Agent,
    AgentApp,
    Check,
    Context,
    Metrics,
    Route,
    StoreError,
    Supervisor,
    Tx,
    availability_will,
    open_store,
)
from mesh.broker.process import MosquittoProcess
from mesh.inbox import POISON_TRIES
from mesh.receipts import ReceiptRecord
from mesh.store.errors import cause_of
from mesh.testing.brokers import as_test_broker, client_for
from mesh.testing.wait import eventually
from tests.conftest import StartAgent, StartApp, make_settings, user

# -- the supervisor on its own ------------------------------------------------------------------


async def test_a_failing_loop_is_restarted_counted_and_named_in_health() -> None:
    """A loop that raises is restarted with backoff and counted; health names it until a
    cycle goes through; a task cancelled from outside is reported as not running."""
    metrics = Metrics()
    sup = Supervisor(metrics, base_s=0.01, cap_s=0.05)
    runs = 0
    failing = True

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if failing:
            raise ValueError(f"injected failure {runs}")
        sup.ok("flaky")
        await asyncio.sleep(3600)

    sup.start("flaky", flaky)
    await eventually(lambda: _true(runs >= 3), timeout=5, what="restarts")
    assert "injected failure" in sup.checks()["task:flaky"].detail
    failing = False
    await eventually(lambda: _true(not sup.checks()), timeout=5, what="a run going through")
    assert sup.failures["flaky"] == runs - 1 >= 3
    assert metrics.total("mesh_task_failures_total") == runs - 1
    assert sup.running("flaky")

    sup.start("victim", lambda: asyncio.sleep(3600))
    await asyncio.sleep(0)
    next(t for t in asyncio.all_tasks() if t.get_name() == "victim").cancel()
    await asyncio.sleep(0.01)
    assert sup.checks() == {"task:victim": Check(ok=False, detail="not running (cancelled)")}
    await sup.stop(1)
    assert not sup.running("flaky")


async def test_a_job_is_retried_until_it_goes_through() -> None:
    sup = Supervisor(base_s=0.01, cap_s=0.05)
    calls = 0

    async def converge() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TimeoutError("read-back timed out")

    await sup.job("converge", converge)
    assert calls == 3 and sup.failures["converge"] == 2 and sup.checks() == {}


async def _true(value: bool) -> bool:
    return value


# -- outage means the connection ----------------------------------------------------------------


def _bug_inside_except_oserror() -> KeyError:
    try:
        raise ConnectionResetError(errno.ECONNRESET, "reset")
    except OSError:
        try:
            raise KeyError("the handler's bug")
        except KeyError as bug:
            return bug


def test_only_the_drivers_word_about_the_connection_is_an_outage() -> None:
    bug = _bug_inside_except_oserror()
    assert isinstance(bug.__context__, OSError)
    assert cause_of(bug) is None, "the implicit context is not looked at"
    client_data = asyncpg.exceptions._base.DataError("invalid input for query argument $1")
    cases: list[tuple[BaseException, str | None]] = [
        (bug, None),
        (client_data, None),
        (
            asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
            None,
        ),
        (asyncpg.InterfaceError("cannot perform operation: connection is closed"), "outage"),
        (asyncpg.exceptions.ConnectionDoesNotExistError("closed"), "outage"),
        (asyncpg.exceptions.AdminShutdownError("shutdown"), "outage"),
        (asyncpg.exceptions.CannotConnectNowError("starting up"), "outage"),
        (asyncpg.exceptions.DiskFullError("no space"), "exhausted"),
        (asyncpg.exceptions.TooManyConnectionsError("too many"), "exhausted"),
        (asyncpg.exceptions.ReadOnlySQLTransactionError("read only"), "exhausted"),
        (asyncpg.exceptions.SerializationError("serialize"), "conflict"),
        (asyncpg.exceptions.DeadlockDetectedError("deadlock"), "conflict"),
        (asyncpg.exceptions.UniqueViolationError("dup"), None),
        (asyncpg.exceptions.DataError("22P02"), None),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "outage"),
        (OSError(errno.ENOSPC, "No space left on device"), "exhausted"),
        (OSError("a handler's own OSError"), None),
        (FileNotFoundError(errno.ENOENT, "nope"), None),
        (sqlite3.OperationalError("database is locked"), "exhausted"),
        (sqlite3.OperationalError("database or disk is full"), "exhausted"),
        (sqlite3.OperationalError("no such table: x"), None),
        (sqlite3.ProgrammingError("Error binding parameter 1"), None),
        (ValueError("bug"), None),
    ]
    for exc, want in cases:
        assert cause_of(exc) == want, (exc, want)
    wrapped = StoreError("PostgreSQL connection failed")
    wrapped.__cause__ = ConnectionResetError(errno.ECONNRESET, "reset")
    assert cause_of(wrapped) == "outage"
    explicit = RuntimeError("wrapper")
    explicit.__cause__ = asyncpg.exceptions.AdminShutdownError("shutdown")
    assert cause_of(explicit) == "outage", "an explicit __cause__ is the driver's"


def _app(handler: Callable[[Context, ActivityLogRequest], Awaitable[ActivityLogReply]]) -> AgentApp:
    route = Route("activities_log", handler, dedup=lambda r: r.source_ref)
    return AgentApp(name="stats", contract=contract(), routes=[route])


async def test_a_handler_bug_inside_except_oserror_is_dead_lettered_not_held(
    broker: MosquittoProcess, start_app: StartApp, db_url: str
) -> None:
    """A KeyError raised while handling an OSError, and asyncpg's client-side DataError (a
    wrong argument type: on SQLite a value it cannot bind), are the handler's: that message
    is answered with an error and dead-lettered at once; the next one is served."""

    async def handler(ctx: Context, req: ActivityLogRequest) -> ActivityLogReply:
        if req.activity_type == "oserror":
            try:
                raise ConnectionResetError(errno.ECONNRESET, "the handler's own socket")
            except OSError:
                raise KeyError("missing")  # noqa: B904 (the bug: an implicit context)
        if req.activity_type == "badarg":
            await ctx.tx.fetchone("SELECT CAST(? AS INTEGER) + 1", object())
        return ActivityLogReply(message="ok")

    uid = user()
    async with (
        start_app(_app(handler), broker, db_url) as agent,
        client_for(broker, contract()) as c,
    ):
        for kind in ("oserror", "badarg"):
            started = time.monotonic()
            req = ActivityLogRequest(user_id=uid, activity_type=kind, source_ref=f"{uid}-{kind}")
            bad = await c.request("activities_log", req, timeout=5)
            assert not bad.success and bad.error is not None
            assert bad.error.code == "internal_error", bad.error
            assert time.monotonic() - started < 3, "answered, not held"
        good = await c.request(
            "activities_log",
            ActivityLogRequest(user_id=uid, activity_type="fine", source_ref=f"{uid}-ok"),
        )
        assert good.success and good.message == "ok"
        assert agent.metrics.total("mesh_dead_letters_total") == 2
        assert agent.committer.trouble is None
        assert agent.metrics.total("mesh_store_retries_total") == 0


async def test_a_full_disk_is_waited_out_even_when_a_probe_write_goes_through(
    broker: MosquittoProcess, start_app: StartApp, db_url: str
) -> None:
    """A disk that is full for new rows can still take an UPDATE in place (the probe): an error
    that says the server cannot take the write (ENOSPC, SQLSTATE 53100, SQLite's "disk is full")
    holds the message past POISON_TRIES, never a poison verdict; it commits once space is back.
    (Seen in the reliability run: a message dead-lettered as poison during the disk-full fault.)"""
    tries = 0
    full_for = 3 * POISON_TRIES

    async def handler(ctx: Context, req: ActivityLogRequest) -> ActivityLogReply:
        nonlocal tries
        tries += 1
        if tries <= full_for:
            raise asyncpg.exceptions.DiskFullError("could not extend file: No space left on device")
        await ctx.tx.fetchone("SELECT 1")
        return ActivityLogReply(message="stored")

    uid = user()
    async with (
        start_app(_app(handler), broker, db_url) as agent,
        client_for(broker, contract()) as c,
    ):
        req = ActivityLogRequest(user_id=uid, activity_type="big", source_ref=f"{uid}-1")
        reply = await c.request("activities_log", req, timeout=90)
        assert reply.success and reply.message == "stored", reply
        assert tries == full_for + 1
        assert agent.metrics.total("mesh_dead_letters_total") == 0


async def test_a_poison_message_is_dead_lettered_after_bounded_tries_while_others_proceed(
    broker: MosquittoProcess, start_app: StartApp, db_url: str
) -> None:
    """A handler that always raises what looks like an outage (ECONNRESET) while the
    database takes writes: that message alone is dead-lettered (poison_message) after a
    bounded number of tries; the messages that came with it and after it are served."""
    tries = 0

    async def handler(ctx: Context, req: ActivityLogRequest) -> ActivityLogReply:
        nonlocal tries
        if req.activity_type == "poison":
            tries += 1
            raise ConnectionResetError(errno.ECONNRESET, "looks like the database went away")
        await ctx.tx.fetchone("SELECT 1")
        return ActivityLogReply(message=req.source_ref or "")

    uid = user()
    async with (
        start_app(_app(handler), broker, db_url) as agent,
        client_for(broker, contract()) as c,
    ):

        async def send(kind: str, ref: str) -> Any:
            req = ActivityLogRequest(user_id=uid, activity_type=kind, source_ref=ref)
            return await c.request("activities_log", req, timeout=60)

        started = time.monotonic()
        answers = await asyncio.gather(
            send("poison", "p"), *(send("fine", f"{uid}-{n}") for n in range(10))
        )
        took = time.monotonic() - started
        poison, good = answers[0], answers[1:]
        assert not poison.success and poison.error.code == "poison_message", poison
        assert all(r.success for r in good), [r.error for r in good if not r.success]
        assert sorted(r.message for r in good) == sorted(f"{uid}-{n}" for n in range(10))
        # bounded: a few tries in its batch, POISON_TRIES alone
        assert tries <= 2 * POISON_TRIES + 2, tries
        print(f"poison message dead-lettered after {tries} tries, {took:.1f}s")
        assert agent.metrics.total("mesh_dead_letters_total") == 1
        later = await send("fine", f"{uid}-later")
        assert later.success and agent.committer.trouble is None


# -- per background task: failures per item and per cycle, the task lives on --------------------


def _checks(rep: Any) -> dict[str, Check]:
    return {k: v for k, v in rep.checks.items() if k.startswith("task:")}


async def test_the_state_publisher_survives_failing_cycles_and_health_says_so(
    broker: MosquittoProcess, start_agent: StartAgent, db_url: str
) -> None:
    """Every publish of retained state fails for a while (the connection, injected): each
    cycle is counted, health names `task:state-publisher`; once publishes go through, the
    sheet is on the broker and health is clean."""
    async with (
        start_agent("stats", broker, db_url) as stats,
        client_for(broker, contract()) as c,
    ):
        real = stats.states._publish
        failing = True

        async def publish(topic: str, key: str, payload: bytes, trace: str | None) -> None:
            if failing:
                raise TimeoutError("injected: no PUBACK")
            await real(topic, key, payload, trace)

        stats.states._publish = publish
        uid = user()
        await c.request(
            "activities_log", ActivityLogRequest(user_id=uid, activity_type="gym_session")
        )

        async def failing_reported() -> bool:
            return "task:state-publisher" in _checks(await stats.health())

        await eventually(failing_reported, timeout=10, what="health naming the publisher")
        assert (await stats.health()).status == "degraded"
        assert stats.supervisor.failures["state-publisher"] >= 1
        failing = False

        async def recovered() -> bool:
            return await stats.states.pending() == 0 and not _checks(await stats.health())

        await eventually(recovered, timeout=20, what="the publisher recovering")
        assert stats.supervisor.running("state-publisher")


async def test_the_outbox_relay_dead_letters_a_record_that_fails_for_good(
    broker: MosquittoProcess, start_agent: StartAgent, db_url: str
) -> None:
    """A record whose publish fails for another reason than the connection (a bug, here an
    injected ValueError) is dead-lettered and the queue moves on; a failing dead-letter hook
    does not stop the relay either."""
    async with (
        start_agent("stats", broker, db_url) as stats,
        client_for(broker, contract()) as c,
    ):
        real_publish, real_refused = stats.relay._publish, stats.relay.on_refused
        assert real_refused is not None
        poisoned: list[str] = []
        refusals = 0

        async def publish(rec: Any) -> None:
            if rec.topic_key == "levelup" and not poisoned:
                poisoned.append(rec.id)
                raise ValueError("injected: cannot publish this one")
            await real_publish(rec)

        async def on_refused(rec: Any, exc: Exception) -> None:
            nonlocal refusals
            refusals += 1
            await real_refused(rec, exc)
            if refusals == 1:
                raise RuntimeError("injected: the dead-letter hook fails too")

        stats.relay._publish = publish
        stats.relay.on_refused = on_refused
        for uid in (user(), user()):  # each first activity levels up: one levelup event each
            gym = ActivityLogRequest(user_id=uid, activity_type="gym_session")
            assert (await c.request("activities_log", gym)).success

        async def drained() -> bool:
            return (await stats.relay.pending())[0] == 0

        await eventually(drained, timeout=20, what="the outbox drained")
        refused = stats.metrics.dead_letters.labels("publish_refused")
        await eventually(lambda: _true(refused._value.get() == 1), what="the dead letter")
        await eventually(
            lambda: _true(stats.supervisor.failures["outbox-relay"] == 1), what="counted"
        )
        assert len(poisoned) == 1 and refusals == 1
        assert stats.supervisor.running("outbox-relay")


async def test_convergence_is_retried_until_the_read_back_goes_through(
    broker: MosquittoProcess, tmp_path: Path, db_url: str
) -> None:
    """The retained-state read-back after a connect fails (injected): the agent starts all
    the same, health names `task:converge`, and it is retried with backoff until it works."""
    settings = make_settings("stats", broker, db_url, tmp_path)
    app = registry.build(settings)
    transport = as_test_broker(broker).agent_transport(
        settings, "stats", availability_will(app.contract, "stats")
    )
    agent = Agent(settings, app, transport=transport, store=open_store(db_url))
    real = agent.states.converge
    calls = 0
    failing = True

    async def converge(topic_keys: list[str], retained: dict[str, bytes]) -> int:
        nonlocal calls
        calls += 1
        if failing:
            raise asyncpg.exceptions.AdminShutdownError("injected: the database restarts")
        return await real(topic_keys, retained)

    agent.states.converge = converge  # type: ignore[method-assign]
    await agent.start()
    try:
        await eventually(lambda: _true(calls >= 2), timeout=20, what="a second try")
        assert "task:converge" in _checks(await agent.health())
        failing = False
        await eventually(
            lambda: _true(not agent.supervisor.running("converge")), timeout=40, what="converged"
        )
        assert not _checks(await agent.health())
        assert agent.metrics.total("mesh_task_failures_total") >= 2
    finally:
        await agent.stop()


@pytest.mark.parametrize("why", ["bug", "looks_transient", "after_receipt"])
async def test_a_failing_receipt_hook_does_not_block_the_next_receipts(
    broker: MosquittoProcess,
    start_agent: StartAgent,
    new_db: Callable[[], str],
    why: str,
) -> None:
    """LifeOps' on_receipt fails for one user's receipts (a bug inside `except OSError`, or
    an ECONNRESET that the database, taking writes, does not explain), or an after_receipt
    hook does: that receipt is stored (without the on_receipt hook's writes) and
    dead-lettered (receipt_hook_failed); the other user's receipts go through, and the XP is
    in Stats for both."""
    bad, good = user(), user()
    async with (
        start_agent("stats", broker, new_db()),
        start_agent("lifeops", broker, new_db()) as lifeops,
        client_for(broker, contract()) as c,
    ):
        real = lifeops.receipts.on_receipt
        assert real is not None
        failed: list[str] = []

        async def hook(tx: Tx, rec: ReceiptRecord, reply: Any) -> None:
            if bad.encode() in rec.payload and why != "after_receipt":
                failed.append(rec.id)
                if why == "bug":
                    raise _bug_inside_except_oserror()
                raise ConnectionResetError(errno.ECONNRESET, "not the database's")
            await real(tx, rec, reply)

        async def after(rec: ReceiptRecord, reply: Any) -> None:
            if bad.encode() in rec.payload:
                failed.append(rec.id)
                raise RuntimeError("the after-receipt hook's bug")

        lifeops.receipts.on_receipt = hook
        lifeops.receipts.after_receipt = after
        for uid, item in ((bad, "walk"), (good, "walk"), (good, "meditation")):
            done = await c.request(
                "timeline_complete", TimelineCompleteRequest(user_id=uid, item_code=item)
            )
            assert done.success, done.error

        async def settled() -> bool:
            return (await lifeops.receipts.pending())[0] == 0

        await eventually(settled, timeout=30, what="every receipt stored")
        assert failed, "the hook ran for the bad user's receipt"
        hook_failed = lifeops.metrics.dead_letters.labels("receipt_hook_failed")
        await eventually(lambda: _true(hook_failed._value.get() == 1), what="the dead letter")
        assert lifeops.supervisor.failures["receipts-store"] >= 1
        assert lifeops.supervisor.running("receipts-store")
        assert not _checks(await lifeops.health()), "dead-lettered and done with: healthy"
        for uid in (bad, good):
            sheet = await c.request("character_get", CharacterGetRequest(user_id=uid))
            assert sheet.total_xp and sheet.total_xp > 0, uid


async def test_labelled_counters_whose_labels_are_known_exist_at_zero_from_the_start(
    broker: MosquittoProcess, start_agent: StartAgent, tmp_path: Path
) -> None:
    """Before anything happened: dead letters per runtime code, request timeouts and
    publish failures per key, received per route, task failures per background task."""
    from prometheus_client import generate_latest

    async with start_agent("lifeops", broker, f"sqlite:///{tmp_path / 'l.db'}") as lifeops:
        text = generate_latest(lifeops.metrics.registry).decode()
    for line in (
        'mesh_dead_letters_total{code="internal_error"} 0.0',
        'mesh_dead_letters_total{code="poison_message"} 0.0',
        'mesh_dead_letters_total{code="receipt_hook_failed"} 0.0',
        'mesh_dead_letters_total{code="retained_command"} 0.0',
        'mesh_request_timeouts_total{key="activity_completed"} 0.0',
        'mesh_publish_failures_total{key="timeline_state",reason="too_large"} 0.0',
        'mesh_publish_failures_total{key="activity_completed",reason="refused_135"} 0.0',
        'mesh_messages_received_total{key="timeline_complete"} 0.0',
        'mesh_task_failures_total{task="receipts-store"} 0.0',
        'mesh_task_failures_total{task="state-publisher"} 0.0',
        'mesh_task_failures_total{task="converge"} 0.0',
        'mesh_store_retries_total{cause="outage"} 0.0',
    ):
        assert line in text, line


@pytest.mark.parametrize("task", ["health", "prune"])
async def test_the_health_and_prune_loops_survive_failing_cycles(
    broker: MosquittoProcess,
    start_agent: StartAgent,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    task: str,
) -> None:
    """The health publisher (its publish fails) and pruning (a database error, injected)
    run with short periods here: every failed cycle is counted, health names the task, and
    once the cause is gone the loop is still there and health is clean."""
    from mesh import health, retention

    failing = True
    async with start_agent("stats", broker, db_url) as stats:
        if task == "health":
            real_publish = stats.publish

            async def publish(key: str, payload: Any, **kw: Any) -> None:
                if failing:
                    raise TimeoutError("injected: no PUBACK for the health report")
                await real_publish(key, payload, **kw)

            monkeypatch.setattr(stats, "publish", publish)
            stats.supervisor.start(
                "health", lambda: health.publish_loop(stats.vitals, interval=0.05)
            )
        else:
            real_prune = retention.prune

            async def prune(*args: Any, **kw: Any) -> dict[str, int]:
                if failing:
                    raise asyncpg.exceptions.UndefinedTableError("injected")
                return await real_prune(*args, **kw)

            monkeypatch.setattr(retention, "prune", prune)
            stats.supervisor.start("prune", lambda: stats._prune_loop(first_s=0, every_s=0.05))

        async def named() -> bool:
            return f"task:{task}" in _checks(await stats.health())

        await eventually(named, timeout=10, what=f"health naming {task}")
        await eventually(lambda: _true(stats.supervisor.failures[task] >= 3), what="3 failures")
        failing = False

        async def clean() -> bool:
            return not _checks(await stats.health())

        await eventually(clean, timeout=10, what=f"{task} working again")
        assert stats.supervisor.running(task)


async def test_a_receipt_record_that_cannot_be_sent_is_dead_lettered_after_bounded_tries(
    broker: MosquittoProcess, start_agent: StartAgent, new_db: Callable[[], str]
) -> None:
    """A stored request whose payload no longer decodes (written by hand here) fails on every
    send: after a bounded number of tries it gets an error reply as its receipt and is
    dead-lettered (receipt_send_failed); a completion meanwhile gets its receipt as usual."""
    import datetime as dt

    uid = user()
    async with (
        start_agent("stats", broker, new_db()),
        start_agent("lifeops", broker, new_db()) as lifeops,
        client_for(broker, contract()) as c,
    ):
        async with lifeops.store.transaction() as tx:
            await tx.execute(
                "INSERT INTO mesh_receipts (id, topic_key, topic, payload, trace_id, created_at,"
                " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                "broken-record",
                "activity_completed",
                "lifeops/activity/completed",
                "{not json",
                None,
                dt.datetime.now(dt.UTC).isoformat(),
                0.0,
            )
        done = await c.request(
            "timeline_complete", TimelineCompleteRequest(user_id=uid, item_code="walk")
        )
        assert done.success

        async def settled() -> bool:
            return (await lifeops.receipts.pending())[0] == 0

        async def dead_lettered() -> bool:
            return bool(
                lifeops.metrics.dead_letters.labels("receipt_send_failed")._value.get() == 1
            )

        await eventually(dead_lettered, timeout=60, what="the broken record dead-lettered")
        await eventually(settled, timeout=10, what="nothing pending")
        receipt = await lifeops.receipts.receipt_of("broken-record")
        assert receipt is not None and receipt.error.code == "receipt_send_failed"
        assert lifeops.supervisor.failures["receipts-send"] >= 5
        assert not _checks(await lifeops.health())
        sheet = await c.request("character_get", CharacterGetRequest(user_id=uid))
        assert sheet.total_xp and sheet.total_xp > 0


async def test_convergence_after_a_reconnect_is_retried_until_it_goes_through(
    own_broker: MosquittoProcess, start_agent: StartAgent, tmp_path: Path
) -> None:
    """The broker restarts; the read-back of retained states after the reconnect fails
    (injected): it is tried again with backoff, not given up, and health names it meanwhile."""
    async with start_agent("stats", own_broker, f"sqlite:///{tmp_path / 's.db'}") as stats:
        real = stats.states.converge
        calls = 0
        failing = True

        async def converge(topic_keys: list[str], retained: dict[str, bytes]) -> int:
            nonlocal calls
            calls += 1
            if failing:
                raise TimeoutError("injected: the read-back timed out")
            return await real(topic_keys, retained)

        stats.states.converge = converge  # type: ignore[method-assign]
        own_broker.kill()
        own_broker.start()
        await stats.transport.wait_connected(20)
        await eventually(lambda: _true(calls >= 3), timeout=30, what="three tries")
        assert "task:converge" in _checks(await stats.health())
        failing = False
        await eventually(
            lambda: _true(not stats.supervisor.running("converge")), timeout=40, what="converged"
        )
        assert not _checks(await stats.health())
