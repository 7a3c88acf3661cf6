"""Security with the real broker and the project's ACL: each account may do exactly what its
contract entries say; no secrets in the repository; a flooding client does not starve others."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from pathlib import Path

import pytest

from lifeops_contract import contract as default_contract
from lifeops_contract.schemas import ActivityLogRequest
from mesh.broker.acl import shadowed
from mesh.broker.process import MosquittoProcess
from mesh.client import MeshClient
from mesh.errors import PublishRefused
from mesh.testing.brokers import connect_as
from mesh.transport import Inbound, Transport
from tests.conftest import StartAgent, user

ROOT = Path(__file__).resolve().parents[2]
PRINCIPALS = default_contract().meta.principals
SHADOWED = set(shadowed(default_contract()))
HASH = re.compile(r"\$[67]\$\d+\$[A-Za-z0-9+/=]{12,}\$[A-Za-z0-9+/=]{40,}")


def _concrete(key: str, principal: str) -> str:
    c = default_contract()
    e = c.entry(key)
    if e.kind == "reply":
        return "reply/tester/acltest"
    params = {p: "acltest" for p in e.params if p != "agent"}
    agent = principal if principal in c.agents else "stats"
    return c.topic(key, agent=agent, **params)


async def _transport(broker: MosquittoProcess, principal: str) -> Transport:
    return await connect_as(broker, principal, prefix="acl")


@pytest.mark.parametrize("principal", PRINCIPALS)
async def test_publish_rights_match_the_contract(
    own_broker: MosquittoProcess, principal: str
) -> None:
    """Allowed publishes succeed; every other one is refused with MQTT v5 reason code 135."""
    c = default_contract()
    t = await _transport(own_broker, principal)
    try:
        for key, e in c.topics.items():
            topic = _concrete(key, principal)
            allowed = principal in e.publishers and (
                "{agent}" not in e.topic or principal in c.agents
            )
            if not allowed and (principal, topic, "write") in SHADOWED:
                allowed = True  # a per-user pattern covers it; the agents refuse it instead
            if allowed:
                await t.publish(topic, e.example.encode(), retain=False)
            else:
                with pytest.raises(PublishRefused) as err:
                    await t.publish(topic, e.example.encode(), retain=False)
                assert err.value.reason_code == 135, (principal, topic)
        if principal in c.agents:  # an agent may not speak for another agent
            other = next(a for a in c.agents if a != principal)
            with pytest.raises(PublishRefused):
                await t.publish(f"{other}/status", b"offline")
    finally:
        await t.disconnect()


async def test_read_rights_match_the_contract(own_broker: MosquittoProcess) -> None:
    """A subscription outside an account's rights is granted but never delivers."""
    c = default_contract()
    received: dict[str, set[str]] = {p: set() for p in PRINCIPALS}
    readers = {}
    for p in PRINCIPALS:
        t = await _transport(own_broker, p)

        async def on(msg: Inbound, p: str = p) -> int:
            received[p].add(msg.topic)
            return 0

        t.on_message = on
        await t.subscribe(["#", "reply/tester/+", "reply/stats/+"])
        readers[p] = t
    await asyncio.sleep(0.3)
    writers = {p: await _transport(own_broker, p) for p in PRINCIPALS}
    sent: dict[str, str] = {}
    for key, e in c.topics.items():
        publisher = e.publishers[0]
        topic = _concrete(key, publisher)
        await writers[publisher].publish(topic, e.example.encode(), retain=False)
        sent[key] = topic
    await writers["stats"].publish("reply/stats/acltest", b"{}")
    await asyncio.sleep(0.5)
    for t in (*readers.values(), *writers.values()):
        await t.disconnect()
    for key, e in c.topics.items():
        for p in PRINCIPALS:
            got = sent[key] in received[p]
            if p == "doctor":
                assert got, (p, key)  # the doctor's read-only account sees all traffic
            elif e.kind == "reply":
                assert got == (p == "tester"), (p, key)
            elif e.own_only:  # each agent reads only its own
                assert got == (p == e.publishers[0]), (p, key, sent[key])
            else:
                want = p in e.subscribers or (p, sent[key], "read") in SHADOWED
                assert got == want, (p, key, sent[key])
    assert "reply/stats/acltest" in received["stats"]
    assert "reply/stats/acltest" not in received["tester"]


def test_wider_grants_are_only_literal_topics_under_per_user_patterns() -> None:
    """Where the broker must be wider than the contract, the topic is a literal request topic
    under a per-user pattern, its last level is a reserved user id, and agents refuse it; or it
    is Home Assistant's birth topic, which every agent's +/status filter also reads (and drops:
    tested in test_runtime)."""
    from lifeops_contract.ids import RESERVED_USER_IDS

    c = default_contract()
    assert SHADOWED, "expected the documented overlaps (stats/character/get, ...)"
    for principal, topic, mode in SHADOWED:
        if topic == c.topic("ha_status"):
            assert mode == "read" and principal in c.agents
            continue
        assert topic.rsplit("/", 1)[1] in RESERVED_USER_IDS
        found = c.match(topic)
        assert found is not None and not found[0].params
        if mode == "write" and principal in c.agents:
            assert not c.publisher_allowed(principal, topic)
    assert "may write lifeops/timeline/complete" in (ROOT / "broker" / "acl").read_text()


async def test_agents_refuse_to_publish_what_the_broker_cannot_stop(
    broker: MosquittoProcess, db_url: str, start_stats: StartAgent
) -> None:
    """Stats could write stats/character/get under its stats/character/+ grant; it refuses."""
    from mesh.errors import ContractError

    async with start_stats(broker, db_url) as stats:
        with pytest.raises(ContractError):
            await stats.publish("character_get", {"user_id": "x"})
        with pytest.raises(ContractError):
            await stats.publish("character_state", {}, user_id="get")


def test_no_secrets_in_the_repository() -> None:
    """Passwords are generated per installation: no password file or credentials are tracked."""
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert files, "not a git checkout"
    assert not [f for f in files if Path(f).name in ("passwd", "credentials.toml")]
    assert sorted(f for f in files if f.startswith("broker/")) == [
        "broker/acl",
        "broker/mosquitto.conf",
    ]
    for f in files:
        path = ROOT / f
        if path.suffix in (".py", ".toml", ".yaml", ".yml", ".conf", ".md", ".sh"):
            text = path.read_text(errors="replace")
            assert not HASH.search(text), f"{f} holds a Mosquitto password hash"


async def test_a_flooding_client_does_not_starve_the_others(
    broker: MosquittoProcess, db_url: str, start_stats: StartAgent
) -> None:
    """One client publishes thousands of bad messages as fast as it can; another client's
    requests are still answered well within their timeout."""
    async with start_stats(broker, db_url):
        flooder = await _transport(broker, "tester")
        junk = b'{"user_id": "flood", "activity_type": "no_such_thing"}'

        async def flood() -> None:
            await asyncio.gather(
                *(flooder.publish("stats/activities/log", junk) for _ in range(3000))
            )

        flood_task = asyncio.create_task(flood())
        latencies = []
        async with MeshClient(broker.url("tester"), default_contract()) as client:
            uid = user()
            for i in range(20):
                start = time.monotonic()
                r = await client.request(
                    "activities_log",
                    ActivityLogRequest(user_id=uid, activity_type="reading", source_ref=f"f{i}"),
                    timeout=5,
                )
                latencies.append(time.monotonic() - start)
                assert r.success
        await flood_task
        await flooder.disconnect()
    assert max(latencies) < 5.0
