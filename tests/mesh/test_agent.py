"""Runtime behaviour common to every agent: availability, request timeouts, handler failures."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from lifeops_contract import contract as default_contract
from lifeops_contract.schemas import CharacterGetRequest, CharacterReply
from lifeops_mesh.processes import agent_process
from mesh import MemoryBroker, open_store
from mesh.agent import Agent, AgentApp
from mesh.broker.process import MosquittoProcess
from mesh.client import MeshClient
from mesh.errors import ContractError, RequestTimeout
from mesh.handler import Context, Route
from mesh.testing.brokers import BrokerUnderTest, InMemoryBroker, client_for, transport_for
from mesh.testing.wait import eventually
from mesh.transport import Inbound
from tests.conftest import StartApp, make_settings


async def _retained(broker: MosquittoProcess, topic: str) -> bytes | None:
    """The retained payload on `topic` as a fresh subscriber sees it (None when none)."""
    got: list[Inbound] = []

    async def on(msg: Inbound) -> int:
        got.append(msg)
        return 0

    t = transport_for(broker, "tester", prefix="ret")
    t.on_message = on
    await t.subscribe([topic])
    await t.connect()
    await asyncio.sleep(0.3)
    await t.disconnect()
    return got[-1].payload if got else None


async def test_availability_online_offline_and_last_will(
    own_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """Retained `online` while running, `offline` after a clean stop and after a kill -9."""
    proc = agent_process(
        "stats", own_broker.url("stats"), f"sqlite:///{tmp_path / 's.db'}", data_dir=tmp_path
    )
    proc.start()
    assert await eventually(lambda: _retained(own_broker, "stats/status")) == b"online"
    proc.stop()
    assert await _retained(own_broker, "stats/status") == b"offline"
    proc.start()
    assert await eventually(lambda: _is(own_broker, b"online"))
    proc.kill()
    assert await eventually(lambda: _is(own_broker, b"offline"), what="Last Will")


async def _is(broker: MosquittoProcess, value: bytes) -> bool:
    return await _retained(broker, "stats/status") == value


async def test_request_without_responder_times_out_clearly(broker: MosquittoProcess) -> None:
    """No agent answers: RequestTimeout names the topic and the timeout."""
    async with MeshClient(broker.url("tester"), default_contract()) as c:
        # a user id nobody's agent is running for still needs a responder: none is started here
        with pytest.raises(RequestTimeout, match=r"stats/character/get.*0\.5s"):
            await c.request("character_get", CharacterGetRequest(user_id="nobody"), timeout=0.5)


async def test_handler_exception_becomes_an_error_reply(
    mesh_broker: BrokerUnderTest, start_app: StartApp, tmp_path: Path
) -> None:
    """A handler that raises: that message gets an error reply and a dead letter, the next one
    is served (on the in-memory twin and on Mosquitto)."""
    calls = 0

    async def flaky(ctx: Context, req: CharacterGetRequest) -> CharacterReply:
        nonlocal calls
        calls += 1
        if req.user_id == "boom":
            raise ZeroDivisionError("division by zero")
        return CharacterReply(total_xp=calls)

    app = AgentApp(
        name="stats", contract=default_contract(), routes=[Route("character_get", flaky)]
    )
    async with (
        start_app(app, mesh_broker, f"sqlite:///{tmp_path / 'x.db'}") as agent,
        client_for(mesh_broker, default_contract()) as c,
    ):
        bad = await c.request("character_get", CharacterGetRequest(user_id="boom"))
        assert bad.success is False and bad.error.code == "internal_error"
        assert "ZeroDivisionError" in bad.error.message
        good = await c.request("character_get", CharacterGetRequest(user_id="fine"))
        # the failing batch ran again with a savepoint per message: boom ran twice
        assert good.success and good.total_xp == calls == 3
        assert agent.metrics.total("mesh_dead_letters_total") == 1


def test_routes_must_match_the_contract(tmp_path: Path) -> None:
    """An agent cannot route a topic the contract does not let it subscribe to."""

    async def h(ctx: Context, payload: object) -> None:
        return None

    settings = make_settings("stats", InMemoryBroker(), "sqlite://", tmp_path)
    for route, error in ((Route("levelup", h), "not one of its subscribers"),
                         (Route("no_such_key", h), "not declared")):  # fmt: skip
        app = AgentApp(name="stats", contract=default_contract(), routes=[route])
        with pytest.raises(ContractError, match=error):
            Agent(
                settings,
                app,
                transport=MemoryBroker().transport("x"),
                store=open_store("sqlite://"),
            )


async def test_emit_refuses_undeclared_publishing(
    mesh_broker: BrokerUnderTest, start_app: StartApp, tmp_path: Path
) -> None:
    """A handler emitting an event its agent may not publish fails that message, not the agent."""

    async def h(ctx: Context, req: CharacterGetRequest) -> CharacterReply:
        await ctx.emit("activity_completed", req)  # stats may not publish completions
        return CharacterReply()

    app = AgentApp(name="stats", contract=default_contract(), routes=[Route("character_get", h)])
    async with (
        start_app(app, mesh_broker, f"sqlite:///{tmp_path / 'e.db'}"),
        client_for(mesh_broker, default_contract()) as c,
    ):
        r = await c.request("character_get", CharacterGetRequest(user_id="x"))
        assert r.success is False and "may not publish" in r.error.message
        again = await c.request("character_get", CharacterGetRequest(user_id="y"))
        assert again.success is False  # still serving: the agent survived the refusal


async def test_puback_timeout_without_a_timer_per_publish(own_broker: MosquittoProcess) -> None:
    """A broker that stops answering: the publish fails with `no PUBACK` close to its timeout
    (the deadline sweeper), the window slot comes back, and publishing works after SIGCONT."""
    import os
    import signal
    import time

    from mesh import plain_transport
    from mesh.errors import TransportError

    t = plain_transport(own_broker.url("tester"))
    await t.connect()
    try:
        assert own_broker.proc is not None
        os.kill(own_broker.proc.pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(TransportError, match="no PUBACK"):
                await t.publish("stats/activities/log", b"{}", qos=1, timeout=0.5)
            assert 0.45 <= time.monotonic() - start < 2.0
        finally:
            os.kill(own_broker.proc.pid, signal.SIGCONT)
        assert t._window.used == 0
        await t.publish("lifeops/timeline/get", b'{"user_id": "x"}', qos=1, timeout=10)
    finally:
        await t.disconnect()


async def test_publish_window_bounds_in_flight_and_hands_on_slots() -> None:
    """The in-flight window: a full window queues publishers in order; a cancelled waiter that
    was already granted a slot passes it on; a resize wakes waiters."""
    from mesh.transport.mqtt import _Window

    w = _Window(2)
    assert w.try_acquire() and w.try_acquire() and not w.try_acquire()
    first = asyncio.ensure_future(w.acquire())
    second = asyncio.ensure_future(w.acquire())
    await asyncio.sleep(0)
    assert not first.done() and w.used == 2
    w.release()  # the slot goes to `first`
    first.cancel()  # ... which no longer wants it: handed on to `second`
    await asyncio.sleep(0)
    await asyncio.wait_for(second, 1)
    assert w.used == 2
    third = asyncio.ensure_future(w.acquire())
    await asyncio.sleep(0)
    w.resize(3)
    await asyncio.wait_for(third, 1)
    assert w.used == 3


async def test_a_restarted_process_on_its_durable_session_learns_the_retained_states_again(
    mesh_broker: BrokerUnderTest, start_agent: Any, tmp_path: Path
) -> None:
    """A new process resuming its durable session (same client id, `session present`) has
    forgotten everything the broker's retained messages told the last one: the broker keeps the
    subscriptions, so it would not send them again, and LifeOps would wait for Stats' `online`
    (health 503) until Stats next said it. The first subscribe of a process asks for them."""
    db = f"sqlite:///{tmp_path / 'lifeops.db'}"
    async with start_agent("stats", mesh_broker, f"sqlite:///{tmp_path / 's.db'}"):
        async with start_agent("lifeops", mesh_broker, db, instance="one") as first:
            await eventually(lambda: _peer_online(first, "stats"), what="stats online")
        async with start_agent("lifeops", mesh_broker, db, instance="one") as again:
            await eventually(lambda: _peer_online(again, "stats"), what="stats online again")
            report = await again.health()
            assert report.checks["stats"].ok, report.checks["stats"]


async def _peer_online(agent: Agent, peer: str) -> bool:
    return agent.peers.get(peer) is True
