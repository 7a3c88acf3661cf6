"""Hostile and careless clients, through the real broker with the project's own config: no
message, client or account can take the mesh down (#15)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lifeops_contract import contract
from lifeops_contract.schemas import (
    ActivityLogRequest,
    CharacterGetRequest,
    CharacterReply,
    CharacterSheet,
    LevelUp,
    TimelineCompleteRequest,
)
from lifeops_mesh.processes import agent_process
from mesh import (
    Agent,
    AgentApp,
    Context,
    Inbound,
    MeshClient,
    PublishRefused,
    RequestTimeout,
    Route,
    codec,
    open_store,
    plain_transport,
)
from mesh.broker.process import MosquittoProcess
from mesh.testing.brokers import InMemoryBroker, client_for, connect_as
from mesh.testing.mqtt_cli import MosquittoCli
from mesh.testing.recorder import Recorder
from mesh.testing.wait import eventually
from mesh.transport import MemoryBroker
from tests.conftest import StartAgent, StartApp, user

CONTROL_BYTES = b"\x01" * 49_152  # 48 KiB: 288 KiB once JSON-escaped (\u0001 per byte)


async def _raw_dead_letter(db_url: str, sha: str) -> bytes | None:
    async with open_store(db_url) as store, store.transaction() as tx:
        rows = await tx.fetchall("SELECT record, raw FROM mesh_dead_letters")
    for record, raw in rows:
        if json.loads(record)["payload_sha256"] == sha:
            return bytes(raw)
    return None


async def test_a_payload_built_to_blow_up_when_escaped_is_a_dead_letter_not_a_disconnect(
    broker: MosquittoProcess, stats: Agent, tester: MeshClient
) -> None:
    """48 KiB of control bytes (QoS 1) to stats/activities/log: the dead letter carries its
    length, SHA-256 and a bounded excerpt, the database the whole payload; Stats never left
    the broker and still answers."""
    cli = MosquittoCli(broker)
    dlq = await cli.sub("mesh/dlq/stats", count=1, wait_s=10)
    sent = await cli.pub("stats/activities/log", CONTROL_BYTES)
    assert sent.returncode == 0, sent.stderr
    got = await dlq.result()
    assert got.returncode == 0, got.stderr
    record = json.loads(got.stdout)
    sha = hashlib.sha256(CONTROL_BYTES).hexdigest()
    assert (record["payload_length"], record["payload_sha256"]) == (len(CONTROL_BYTES), sha)
    assert record["payload_truncated"] and record["error"]["code"] == "invalid_json"
    assert len(got.stdout) < 32_000  # the excerpt, escaped: far below the packet limit
    assert await _raw_dead_letter(stats.store.url, sha) == CONTROL_BYTES
    reply = await tester.request("character_get", CharacterGetRequest(user_id=user()))
    assert reply.error.code == "not_found"
    assert stats.transport.reconnects == 0 and stats.transport.connected


def _oversized_app() -> AgentApp:
    """A Stats whose handler makes a reply and an event too large for the broker."""

    async def get(ctx: Context, req: CharacterGetRequest) -> CharacterReply:
        if req.user_id == "big-event":
            await ctx.emit(
                "levelup",
                LevelUp(
                    event_id="x" * 300_000,
                    user_id="big",
                    new_level=2,
                    previous_level=1,
                    total_xp=1,
                    activity_id="a",
                    occurred_at=ctx.now,
                ),
            )
        if req.user_id == "small-event":
            await ctx.emit(
                "levelup",
                LevelUp(
                    event_id="small",
                    user_id="small",
                    new_level=2,
                    previous_level=1,
                    total_xp=1,
                    activity_id="a",
                    occurred_at=ctx.now,
                ),
            )
        if req.user_id == "big-reply":
            return CharacterReply(character=CharacterSheet(user_id="x" * 300_000))
        return CharacterReply(total_xp=1)

    return AgentApp(name="stats", contract=contract(), routes=[Route("character_get", get)])


async def test_an_own_publish_over_the_limit_is_a_counted_error_never_a_loop(
    broker: MosquittoProcess, start_app: StartApp, tmp_path: Path
) -> None:
    """A reply too large becomes a small error reply; an event too large is dead-lettered and
    counted, and the outbox goes on with the next one; the agent stays connected and says it
    is degraded (publishing)."""
    async with (
        start_app(_oversized_app(), broker, f"sqlite:///{tmp_path / 'o.db'}") as agent,
        client_for(broker, contract()) as c,
        Recorder(broker, ["stats/levelup", "mesh/dlq/stats"]) as rec,
    ):
        big = await c.request("character_get", CharacterGetRequest(user_id="big-reply"))
        assert big.success is False and big.error.code == "reply_too_large"
        await c.request("character_get", CharacterGetRequest(user_id="big-event"))
        await c.request("character_get", CharacterGetRequest(user_id="small-event"))

        async def small_published() -> bool:
            return any(b'"small"' in m.payload for m in rec.on("stats/levelup"))

        await eventually(small_published, what="the next event after the refused one")
        dead = [json.loads(m.payload) for m in rec.on("mesh/dlq/stats")]
        assert [d["error"]["code"] for d in dead] == ["publish_too_large"]
        assert dead[0]["payload_length"] > 300_000
        failures = agent.metrics.total("mesh_publish_failures_total")
        assert failures == 2  # the reply and the event
        report = await agent.health()
        assert report.status == "degraded" and "stats/levelup" in report.checks["publishing"].detail
        assert agent.transport.reconnects == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": "a", "activity_type": "x" * 65}, "$.activity_type"),
        ({"user_id": "a" * 200, "activity_type": "reading"}, "$.user_id"),
        ({"user_id": "a", "activity_type": "reading", "source_ref": "r" * 300}, "$.source_ref"),
        ({"user_id": "a", "activity_type": "reading", "transaction": "t" * 300}, "$.transaction"),
        ({"user_id": "a", "activity_type": "reading", "streak": 10**20}, "$.streak"),
        (
            {"user_id": "a", "activity_type": "reading", "activity_data": {"n": 10**30}},
            "$.activity_data.n",
        ),
        (
            {"user_id": "a", "activity_type": "reading", "activity_data": {"a": [[[[[1]]]]]}},
            "$.activity_data.a",
        ),
        (
            {"user_id": "a", "activity_type": "x", "custom_xp": {f"S{i}": 1 for i in range(40)}},
            "$.custom_xp",
        ),
    ],
)
def test_schemas_bound_sizes_and_nesting_naming_the_field(body: object, field: str) -> None:
    """Strings, lists, numbers and nesting have bounds; the error names the field."""
    from mesh import DecodeError

    with pytest.raises(DecodeError) as err:
        codec.decode(json.dumps(body).encode(), ActivityLogRequest)
    assert field in err.value.message and err.value.code == "validation_error"


async def test_a_refused_subscription_makes_the_agent_unhealthy(
    start_agent: StartAgent, tmp_path: Path
) -> None:
    """On a broker that refuses a subscription in its SUBACK (here the twin, as EMQX and
    HiveMQ do), the agent says which filter and is degraded instead of healthy."""
    refused = "lifeops/oura/import"

    def allow(user: str | None, topic: str, mode: str) -> bool:
        return not (mode == "read" and topic == refused)

    twin = InMemoryBroker(MemoryBroker(allow=allow))
    async with start_agent("lifeops", twin, f"sqlite:///{tmp_path / 'l.db'}") as agent:
        report = await agent.health()
        assert report.status == "degraded"
        assert refused in report.checks["subscriptions"].detail


async def test_an_acl_for_another_discovery_prefix_shows_in_health(
    broker: MosquittoProcess, start_agent: StartAgent, tmp_path: Path
) -> None:
    """Mosquitto grants a denied subscription (SUBACK 0) but refuses the publishes: a bridge
    configured for a prefix the ACL does not have is degraded, names the topics, and stays
    connected (no reconnect loop)."""
    db = f"sqlite:///{tmp_path / 'b.db'}"
    env = {"LIFEOPS_HA_DISCOVERY_PREFIX": "hass", "LIFEOPS_HA_USERS": user()}
    async with start_agent("ha_bridge", broker, db, env=env) as bridge:

        async def degraded() -> bool:
            return "publishing" in (await bridge.health()).checks

        await eventually(degraded, what="publish refusals in health")
        detail = (await bridge.health()).checks["publishing"].detail
        assert "hass/" in detail and "refused_135" in detail
        assert bridge.transport.reconnects == 0


async def test_an_expired_request_is_never_executed(
    broker: MosquittoProcess, start_agent: StartAgent, tmp_path: Path
) -> None:
    """A request whose Message Expiry passed while it waited in Stats' durable session is
    dropped by the broker; one without expiry is executed when Stats comes back."""
    db = f"sqlite:///{tmp_path / 's.db'}"
    instance = uuid.uuid4().hex[:6]
    async with start_agent("stats", broker, db, instance=instance, session_expiry_s=300):
        pass  # the session stays (durable), the agent is gone
    uid, cli = user(), MosquittoCli(broker)
    for ref, expiry in (
        ("expired", ["-D", "publish", "message-expiry-interval", "1"]),
        ("kept", []),
    ):
        body = {"user_id": uid, "activity_type": "reading", "source_ref": f"{uid}-{ref}"}
        sent = await cli.pub("stats/activities/log", json.dumps(body), extra=expiry)
        assert sent.returncode == 0, sent.stderr
    await asyncio.sleep(3.0)  # Mosquitto counts expiry in whole seconds: leave a margin
    async with start_agent("stats", broker, db, instance=instance, session_expiry_s=300) as agent:

        async def refs() -> set[str]:
            async with agent.store.transaction() as tx:
                rows = await tx.fetchall("SELECT source_ref FROM stats_activities")
            return {r[0] for r in rows}

        assert await eventually(refs, what="the kept request") == {f"{uid}-kept"}
        await asyncio.sleep(0.5)
        assert await refs() == {f"{uid}-kept"}


async def test_requests_of_the_mesh_carry_their_timeout_as_expiry(
    broker: MosquittoProcess, tester: MeshClient
) -> None:
    """A request sent by the runtime expires with its wait for the reply (here 3 s, nobody
    answers): a broker holding it for an absent responder drops it then."""
    async with Recorder(broker, ["stats/character/get"]) as rec:
        with pytest.raises(RequestTimeout):
            await tester.request("character_get", CharacterGetRequest(user_id="x"), timeout=3)
        (msg,) = rec.on("stats/character/get")
        assert msg.expiry_s is not None and 2 <= msg.expiry_s <= 3


async def test_a_retained_command_is_dead_lettered_not_replayed(
    broker: MosquittoProcess, start_agent: StartAgent, tmp_path: Path
) -> None:
    """A retained stats/activities/log would replay on every new session: a new Stats
    dead-letters it (retained_command) and grants nothing."""
    uid, cli = user(), MosquittoCli(broker)
    body = json.dumps({"user_id": uid, "activity_type": "gym_session", "source_ref": uid})
    assert (await cli.pub("stats/activities/log", body, retain=True)).returncode == 0
    try:
        async with (
            Recorder(broker, ["mesh/dlq/stats"]) as rec,
            start_agent("stats", broker, f"sqlite:///{tmp_path / 'r.db'}") as agent,
        ):

            async def dead() -> list[Inbound]:
                return [m for m in rec.on("mesh/dlq/stats") if uid.encode() in m.payload]

            (msg,) = await eventually(dead, what="the retained command's dead letter")
            assert json.loads(msg.payload)["error"]["code"] == "retained_command"
            async with agent.store.transaction() as tx:
                assert (
                    await tx.fetchone("SELECT 1 FROM stats_characters WHERE user_id = ?", uid)
                    is None
                )
    finally:
        await cli.pub("stats/activities/log", None, retain=True)


async def test_an_unusable_response_topic_is_refused_with_a_reason(
    broker: MosquittoProcess, stats: Agent
) -> None:
    """A response topic outside reply/<username>/...: dead letter that says where replies go,
    and the request is not executed unheard."""
    uid, cli = user(), MosquittoCli(broker)
    dlq = await cli.sub("mesh/dlq/stats", count=1, wait_s=10)
    body = json.dumps({"user_id": uid, "activity_type": "reading", "source_ref": uid})
    await cli.pub(
        "stats/activities/log", body, extra=["-D", "publish", "response-topic", "myreply"]
    )
    record = json.loads((await dlq.result()).stdout)
    assert record["error"]["code"] == "invalid_response_topic"
    assert "reply/<your username>/" in record["error"]["message"]


def _second_process(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lifeops_mesh", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def test_a_second_process_with_the_same_client_id_refuses(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    """`run stats --instance X` twice: the second refuses at once in one line; the first keeps
    its session (the broker never saw a takeover)."""
    instance = f"dup{uuid.uuid4().hex[:6]}"
    first = agent_process(
        "stats", broker.url("stats"), f"sqlite:///{tmp_path / 'a.db'}", data_dir=tmp_path,
        instance=instance,
    )  # fmt: skip
    first.start()
    try:
        second = await asyncio.to_thread(
            _second_process,
            ["run", "stats", "--broker", broker.url("stats"), "--db",
             f"sqlite:///{tmp_path / 'b.db'}", "--instance", instance],
        )  # fmt: skip
        assert second.returncode == 2
        assert (
            "already running" in second.stderr and f"lifeops-mesh-stats-{instance}" in second.stderr
        )
        assert len([ln for ln in second.stderr.splitlines() if ln.startswith("lifeops-mesh:")]) == 1
        log = broker.log_file.read_text()
        assert f"lifeops-mesh-stats-{instance} already connected" not in log
        async with MeshClient(broker.url("tester"), contract()) as c:
            r = await c.request("character_get", CharacterGetRequest(user_id="nobody-dup"))
            assert r.error.code == "not_found"
    finally:
        first.stop()


async def test_a_takeover_stops_the_old_instance_instead_of_a_ping_pong(
    broker: MosquittoProcess, start_agent: StartAgent, tmp_path: Path
) -> None:
    """Something connects with a running agent's client id anyway (and keeps reconnecting):
    after two takeovers the agent halts with the reason instead of throwing it off forever;
    the broker log shows a few takeovers, then none."""
    async with start_agent("stats", broker, f"sqlite:///{tmp_path / 't.db'}") as agent:
        intruder = plain_transport(broker.url("stats"), client_id=agent.settings.client_id)
        await intruder.connect()
        try:
            await asyncio.wait_for(agent.halted.wait(), 15)
            assert agent.failure is not None and agent.settings.client_id in agent.failure
            settled = broker.log_file.read_text().count(f"{agent.settings.client_id} already")
            await asyncio.sleep(3)
            assert intruder.connected and not agent.transport.connected
            takeovers = broker.log_file.read_text().count(f"{agent.settings.client_id} already")
            assert takeovers == settled <= 4
        finally:
            await intruder.disconnect()


def test_a_second_up_refuses_and_touches_nothing(tmp_path: Path) -> None:
    """A second `up` on the same data dir says what runs there and changes no file; one on
    another data dir but the same port says the port is taken."""
    from mesh.broker.process import free_port

    data, port = tmp_path / "data", free_port()
    first = subprocess.Popen(
        [sys.executable, "-m", "lifeops_mesh", "up", "--data", str(data), "--port", str(port),
         "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert first.stdout is not None
        for line in first.stdout:
            if "mesh is up" in line:
                break
        files = {p: p.stat().st_mtime_ns for p in (data / "broker").iterdir() if p.is_file()}
        again = _second_process(["up", "--data", str(data), "--port", str(free_port()), "--once"])
        assert again.returncode == 2 and "another `lifeops-mesh up` is running" in again.stderr
        assert {p: p.stat().st_mtime_ns for p in files} == files
        other = _second_process(
            ["up", "--data", str(tmp_path / "other"), "--port", str(port), "--once"]
        )
        assert other.returncode == 2 and f"port {port}" in other.stderr and "in use" in other.stderr
        for result in (again, other):
            assert "Traceback" not in result.stderr
    finally:
        first.terminate()
        first.communicate(timeout=30)


async def test_lifeops_only_fields_count_only_on_lifeops_topics(
    broker: MosquittoProcess, stats: Agent, tester: MeshClient
) -> None:
    """`source: lifeops` on stats/activities/log is refused; a streak there is not honoured;
    and only LifeOps may publish lifeops/activity/completed (135 for anyone else)."""
    uid = user()
    fake = await tester.request(
        "activities_log",
        ActivityLogRequest(user_id=uid, activity_type="reading", source="lifeops", source_ref=uid),
    )
    assert fake.error.code == "invalid_source"
    streaky = await tester.request(
        "activities_log", ActivityLogRequest(user_id=uid, activity_type="reading", streak=30)
    )
    assert streaky.success and not [a for a in streaky.achievements if a.startswith("streak")]
    t = await connect_as(broker, "tester")
    try:
        with pytest.raises(PublishRefused) as err:
            await t.publish("lifeops/activity/completed", b"{}")
        assert err.value.reason_code == 135
    finally:
        await t.disconnect()


async def test_derived_ids_cannot_be_pre_claimed(
    broker: MosquittoProcess,
    stats: Agent,
    start_agent: StartAgent,
    tmp_path: Path,
    tester: MeshClient,
) -> None:
    """Ids LifeOps and Stats derive are keyed per installation: an activity sent first under
    the id a public derivation would give does not block the real completion or log."""
    import datetime as dt

    uid = user()
    today = dt.datetime.now(dt.UTC).date().isoformat()
    public_ns = uuid.UUID("0b7d2f5e-3c1a-4e8b-9f60-7a5d4c3b2a19")  # the namespace once used
    guessed = str(uuid.uuid5(public_ns, f"{uid}:morning_stretch:{today}"))
    squat = await tester.request(
        "activities_log",
        ActivityLogRequest(user_id=uid, activity_type="reading", activity_id=guessed),
    )
    assert squat.success
    async with (
        start_agent("lifeops", broker, f"sqlite:///{tmp_path / 'l.db'}"),
    ):
        done = await tester.request(
            "timeline_complete", TimelineCompleteRequest(user_id=uid, item_code="morning_stretch")
        )
        assert done.success and done.activity_id != guessed
        assert not done.xp_pending and done.xp_granted == {"STA": 5, "DEX": 10}
