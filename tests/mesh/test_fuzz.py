"""Hypothesis fuzzes every topic the agents answer, through the real broker, while valid
traffic flows and hostile clients do their worst.

Generated payloads: invalid JSON, wrong types, missing and extra fields, huge numbers, deep
nesting, long strings, strings of control bytes that grow sixfold when escaped, non-UTF-8 bytes,
and user ids carrying `+`, `#`, `/`, NUL or `$`. Around them: a retained command waiting for the
agents' new sessions, requests that expired while Stats was away, and a second Stats started
with the running one's client id. Afterwards every agent answers, none reconnected, and every
refusal has its one dead letter.
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
from lifeops_contract.schemas import (
    ActivityLogReply,
    ActivityLogRequest,
    CharacterGetRequest,
    TimelineCompleteRequest,
)
from lifeops_mesh import registry
from mesh import PacketTooLarge, Settings, codec, mqtt_agent
from mesh.agent import Agent
from mesh.broker.process import MosquittoProcess
from mesh.presence import InstanceRunning
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
    kinds = ["json", "junk", "bytes", "deep", "long", "fields", "ids", "escaped", "huge"]
    kind = draw(st.sampled_from(kinds))
    if kind == "escaped":  # valid JSON whose strings are 6x longer once escaped again
        size = draw(st.integers(1000, 40_000))
        return json.dumps({"user_id": "\x01" * size, "activity_type": "\x02" * 70}).encode()
    if kind == "huge":
        field = draw(st.sampled_from(["streak", "transaction", "custom_xp", "activity_data"]))
        big = 10 ** draw(st.integers(19, 400))
        value: object = {"STR": big} if field == "custom_xp" else big
        value = {"n": big} if field == "activity_data" else value
        return json.dumps({"user_id": "a", "activity_type": "reading", field: value}).encode()
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
    """Stats and LifeOps running, plus a tester connection that records replies and dead
    letters. Before they start: Stats' durable session exists without Stats (requests that
    expire there), and a retained completion waits for LifeOps' first session."""

    def __init__(self, broker: MosquittoProcess, tmp: Path) -> None:
        self.broker = broker
        self.tmp = tmp
        self.replies: dict[bytes, Inbound] = {}
        self.dead: list[Inbound] = []
        self.uid = "fz" + uuid.uuid4().hex[:10]
        self.stats_settings = make_settings(
            "stats", broker, f"sqlite:///{tmp / uuid.uuid4().hex}.db", tmp, session_expiry_s=300
        )
        self.expired: list[bytes] = []

    async def __aenter__(self) -> Rig:
        self.agents: list[Agent] = []
        self.t = transport_for(self.broker, "tester")
        self.t.on_message = self._on
        self.reply_topic = f"reply/tester/fuzz{uuid.uuid4().hex[:6]}"
        await self.t.subscribe([self.reply_topic, "mesh/dlq/+"])
        await self.t.connect()
        await self._start(self.stats_settings)
        await self.agents.pop().stop()  # a durable session without its agent
        await self._while_stats_is_away()
        await self._start(self.stats_settings)
        lifeops = make_settings(
            "lifeops", self.broker, f"sqlite:///{self.tmp / uuid.uuid4().hex}.db", self.tmp
        )
        await self._start(lifeops)
        return self

    async def _start(self, s: Settings) -> None:
        agent = mqtt_agent(s, registry.build(s))
        await agent.start()
        self.agents.append(agent)

    async def _while_stats_is_away(self) -> None:
        """Requests that expire in Stats' queue, and a retained command for LifeOps' new session
        (it would complete an item on every new session, were it executed)."""
        for n in range(3):
            body = ActivityLogRequest(
                user_id=self.uid, activity_type="reading", source_ref=f"expired-{n}"
            )
            cid = uuid.uuid4().bytes
            await self.t.publish(
                "stats/activities/log",
                codec.encode(body),
                response_topic=self.reply_topic,
                correlation_data=cid,
                expiry_s=1,
            )
            self.expired.append(cid)
        retained = TimelineCompleteRequest(user_id=self.uid, item_code="morning_stretch")
        await self.t.publish("lifeops/timeline/complete", codec.encode(retained), retain=True)
        await asyncio.sleep(2.8)  # Mosquitto counts expiry in whole seconds: leave a margin

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
        for agent in self.agents:
            await agent.stop()
        await self.t.publish("lifeops/timeline/complete", b"", retain=True)  # clear it
        await self.t.disconnect()


@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.sampled_from(_topics()), bad_payloads()), min_size=10, max_size=30))
def test_fuzzed_payloads_never_crash_or_stall_an_agent(
    broker: MosquittoProcess, tmp_path_factory: Any, cases: list[tuple[str, bytes]]
) -> None:
    """Every generated message gets an answer and every refusal exactly one dead letter (with
    the payload's length); valid traffic between them counts exactly; expired requests are not
    executed; the retained command is dead-lettered; a second Stats with the running one's
    client id refuses; afterwards no agent has reconnected and each answers."""
    tmp = tmp_path_factory.mktemp("fuzz")

    async def scenario() -> None:
        async with Rig(broker, tmp) as rig:
            sent, valid = await _traffic(rig, cases)
            await _all_answered(rig, sent + valid)
            failed = _check_replies(rig, sent, valid)
            await asyncio.sleep(0.5)
            _check_dead_letters(rig, dict(zip(sent, cases, strict=True)), failed)
            await _check_state(rig, len(cases))

    asyncio.run(scenario())


async def _traffic(rig: Rig, cases: list[tuple[str, bytes]]) -> tuple[list[bytes], list[bytes]]:
    sent: list[bytes] = []
    valid: list[bytes] = []
    for n, (topic, body) in enumerate(cases):
        sent.append(await rig.send(topic, body))
        good = ActivityLogRequest(user_id=rig.uid, activity_type="reading", source_ref=f"v-{n}")
        valid.append(await rig.send("stats/activities/log", codec.encode(good)))
        if n == len(cases) // 2:  # a second process with Stats' client id, mid-traffic
            twin = mqtt_agent(rig.stats_settings, registry.build(rig.stats_settings))
            with pytest.raises(InstanceRunning):
                await twin.start()
    return sent, valid


async def _all_answered(rig: Rig, cids: list[bytes]) -> None:
    deadline = asyncio.get_running_loop().time() + 30
    while asyncio.get_running_loop().time() < deadline:
        if all(c in rig.replies for c in cids):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{sum(c not in rig.replies for c in cids)} messages got no reply")


def _check_replies(rig: Rig, sent: list[bytes], valid: list[bytes]) -> set[str]:
    """The correlation data (hex) of every refused fuzz message."""
    failed = set()
    for c in sent:
        reply = json.loads(rig.replies[c].payload)
        assert isinstance(reply.get("success"), bool)
        if not reply["success"] and reply["error"]["code"] != "already_completed":
            assert reply["error"]["code"] and reply["error"]["message"]
            failed.add(c.hex())
    for c in valid:
        r = codec.decode(rig.replies[c].payload, ActivityLogReply)
        assert r.success, r.error
    answered = [rig.replies[c].payload[:300] for c in rig.expired if c in rig.replies]
    assert not answered, f"an expired request was answered: {answered}"
    return failed


def _check_dead_letters(rig: Rig, cases: dict[bytes, tuple[str, bytes]], failed: set[str]) -> None:
    records = [json.loads(m.payload) for m in rig.dead]
    by_cid: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_cid.setdefault(r.get("correlation_data") or "", []).append(r)
    for cid, (topic, body) in cases.items():
        got = by_cid.get(cid.hex(), [])
        assert len(got) == (1 if cid.hex() in failed else 0), (topic, body[:100], got)
        if got:
            assert got[0]["payload_length"] == len(body) and got[0]["topic"] == topic
    retained = [r for r in records if r["error"]["code"] == "retained_command"]
    assert len(retained) == 1 and retained[0]["topic"] == "lifeops/timeline/complete"


async def _check_state(rig: Rig, n: int) -> None:
    stats = rig.agents[0]
    async with stats.store.transaction() as tx:
        row = await tx.fetchone("SELECT total_xp FROM stats_characters WHERE user_id = ?", rig.uid)
        expired = await tx.fetchall(
            "SELECT source_ref FROM stats_activities WHERE source_ref LIKE 'expired-%'"
        )
    assert row is not None and row[0] == 30 * n and not expired
    reply = await asyncio.wait_for(_get_character(rig, rig.uid), 10)
    assert reply["success"] and reply["total_xp"] == 30 * n
    timeline = await rig.send("lifeops/timeline/get", codec.encode({"user_id": rig.uid}))
    await _all_answered(rig, [timeline])
    day = json.loads(rig.replies[timeline].payload)["timeline"]
    assert day["done"] == 0  # the retained completion was never executed
    log = rig.broker.log_file.read_text()
    for agent in rig.agents:
        assert agent.transport.reconnects == 0, agent.name
        assert f"{agent.settings.client_id} already connected" not in log


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
