"""Hypothesis fuzzes every topic the agents subscribe to, through the real broker.

Generated payloads: invalid JSON, wrong types, missing and extra fields, huge numbers, deep
nesting, long strings, non-UTF-8 bytes, and user ids carrying `+`, `#`, `/`, NUL or `$`. No agent
crashes or stalls; each bad request gets an error reply and a dead-letter record; valid traffic
interleaved with it is processed correctly.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifeops_contract import contract as default_contract
from lifeops_contract.schemas import ActivityLogReply, ActivityLogRequest, CharacterGetRequest
from lifeops_mesh import registry
from mesh import PacketTooLarge, codec, mqtt_agent
from mesh.agent import Agent
from mesh.broker.process import MosquittoProcess
from mesh.testing.brokers import transport_for
from mesh.testing.mqtt_cli import MosquittoCli
from mesh.transport import Inbound
from tests.conftest import make_settings

NASTY_IDS = ["a+b", "#", "a/b", "a\x00b", "$SYS", "", "x" * 300, "ü", " ", "get"]
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False),
    st.text(max_size=50),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "user_id",
    "activity_type",
    "item_code",
    "source",
    "source_ref",
    "custom_xp",
    "activity_id",
    "date",
    "scores",
    "days",
    "timezone",
    "completed_at",
    "streak",
]


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


@st.composite
def bad_payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["json", "junk", "bytes", "deep", "long", "fields", "ids"]))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "junk":
        return draw(st.text(max_size=80)).encode("utf-8", "surrogatepass")
    if kind == "bytes":
        return draw(st.binary(max_size=80)) + b"\xff\xfe"
    if kind == "deep":
        return _deep(draw(st.integers(min_value=50, max_value=5000)))
    if kind == "long":
        return json.dumps(
            {"user_id": "x" * draw(st.integers(1000, 100_000)), "activity_type": "gym_session"}
        ).encode()
    if kind == "fields":
        body = draw(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6))
        return json.dumps(body).encode()
    uid = draw(st.sampled_from(NASTY_IDS))
    return json.dumps(
        {
            "user_id": uid,
            "activity_type": "gym_session",
            "item_code": "reading",
            "date": "2026-11-01",
            "scores": {},
            "days": [],
        }
    ).encode()


def _topics() -> list[str]:
    """Every answering topic (request/response pairs) an agent routes that the tester account may
    publish to. (The bridge's inputs answer nothing: test_ha_bridge fuzzes them.)"""
    c = default_contract()
    routed: set[str] = set()
    for name, build in registry.builders().items():
        s = make_settings_for_listing(name)
        routed |= {r.key for r in build(s).routes}
    return sorted(
        c.topic(k)
        for k in routed
        if "tester" in c.entry(k).publishers and c.entry(k).reply_schema is not None
    )


def make_settings_for_listing(name: str) -> Any:
    from mesh.settings import build_settings

    return build_settings(name, broker_url="mqtt://127.0.0.1:1", env={})


class Rig:
    """Stats and LifeOps running, plus a tester connection that records replies."""

    def __init__(self, broker: MosquittoProcess, tmp: Path) -> None:
        self.broker = broker
        self.tmp = tmp
        self.replies: dict[bytes, Inbound] = {}
        self.dead: list[Inbound] = []

    async def __aenter__(self) -> Rig:
        self.agents: list[Agent] = []
        for name in ("stats", "lifeops"):
            s = make_settings(
                name, self.broker, f"sqlite:///{self.tmp / uuid.uuid4().hex}.db", self.tmp
            )
            agent = mqtt_agent(s, registry.build(s))
            await agent.start()
            self.agents.append(agent)
        self.t = transport_for(self.broker, "tester")
        self.t.on_message = self._on
        self.reply_topic = f"reply/tester/fuzz{uuid.uuid4().hex[:6]}"
        await self.t.subscribe([self.reply_topic, "mesh/dlq/+"])
        await self.t.connect()
        await asyncio.sleep(0.1)
        return self

    async def _on(self, msg: Inbound) -> int:
        if msg.topic.startswith("mesh/dlq/"):
            self.dead.append(msg)
        elif msg.correlation_data:
            self.replies[msg.correlation_data] = msg
        return 0

    async def send(self, topic: str, body: bytes) -> bytes:
        cid = uuid.uuid4().bytes
        await self.t.publish(topic, body, response_topic=self.reply_topic, correlation_data=cid)
        return cid

    async def __aexit__(self, *exc: object) -> None:
        await self.t.disconnect()
        for agent in self.agents:
            await agent.stop()


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.sampled_from(_topics()), bad_payloads()), min_size=10, max_size=30))
def test_fuzzed_payloads_never_crash_or_stall_an_agent(
    broker: MosquittoProcess, tmp_path_factory: Any, cases: list[tuple[str, bytes]]
) -> None:
    """Every generated message gets an answer; errors are dead-lettered; valid traffic between
    them is counted exactly."""
    tmp = tmp_path_factory.mktemp("fuzz")

    async def scenario() -> None:
        async with Rig(broker, tmp) as rig:
            uid = "fz" + uuid.uuid4().hex[:10]
            sent: list[bytes] = []
            valid: list[bytes] = []
            for n, (topic, body) in enumerate(cases):
                sent.append(await rig.send(topic, body))
                good = ActivityLogRequest(
                    user_id=uid, activity_type="reading", source_ref=f"valid-{n}"
                )
                valid.append(await rig.send("stats/activities/log", codec.encode(good)))
            deadline = asyncio.get_running_loop().time() + 30
            while asyncio.get_running_loop().time() < deadline:
                if all(c in rig.replies for c in sent + valid):
                    break
                await asyncio.sleep(0.05)
            missing = [i for i, c in enumerate(sent) if c not in rig.replies]
            assert not missing, f"no reply to {[cases[i] for i in missing][:3]}"
            errors = 0
            for c in sent:
                reply = json.loads(rig.replies[c].payload)
                assert isinstance(reply.get("success"), bool)
                if not reply["success"]:
                    errors += 1
                    assert reply["error"]["code"] and reply["error"]["message"]
            for c in valid:
                r = codec.decode(rig.replies[c].payload, ActivityLogReply)
                assert r.success, r.error
            await asyncio.sleep(0.3)
            expected_dead = sum(
                1
                for c in sent
                if not json.loads(rig.replies[c].payload)["success"]
                and json.loads(rig.replies[c].payload)["error"]["code"] != "already_completed"
            )
            assert len(rig.dead) >= expected_dead
            stats = rig.agents[0]
            async with stats.store.transaction() as tx:
                row = await tx.fetchone(
                    "SELECT total_xp FROM stats_characters WHERE user_id = ?", uid
                )
            assert row is not None and row[0] == 30 * len(cases)
            reply = await asyncio.wait_for(_get_character(rig, uid), 10)
            assert reply["success"] and reply["total_xp"] == 30 * len(cases)
            assert errors >= 0

    asyncio.run(scenario())


async def _get_character(rig: Rig, uid: str) -> dict[str, Any]:
    cid = await rig.send("stats/character/get", codec.encode(CharacterGetRequest(user_id=uid)))
    for _ in range(500):
        if cid in rig.replies:
            reply: dict[str, Any] = json.loads(rig.replies[cid].payload)
            return reply
        await asyncio.sleep(0.02)
    raise AssertionError("no reply to character_get")


def test_oversized_message_is_refused_by_the_broker_not_the_agents(
    broker: MosquittoProcess,
) -> None:
    """A message over max_packet_size (256 KiB) never reaches an agent: the mesh's own client
    refuses to send it (the broker's CONNACK limit) and stays connected, the broker drops a
    mosquitto_pub that sends it anyway, and the mesh keeps serving."""

    async def scenario() -> None:
        import tempfile

        async with Rig(broker, Path(tempfile.mkdtemp())) as rig:
            big = transport_for(broker, "tester")
            await big.connect()
            body = json.dumps({"user_id": "big", "activity_type": "x" * 300_000}).encode()
            try:
                with pytest.raises(PacketTooLarge, match="maximum packet size 262144"):
                    await big.publish("stats/activities/log", body, timeout=3)
                assert big.connected
            finally:
                await big.disconnect()
            # MQTT 3.1.1 has no CONNACK limit: this client sends, and the broker disconnects it.
            sent = await MosquittoCli(broker).pub("stats/activities/log", body, v5=False)
            assert sent.returncode != 0, sent
            reply = await asyncio.wait_for(_get_character(rig, "nobody-here"), 10)
            assert reply["error"]["code"] == "not_found"

    asyncio.run(scenario())
