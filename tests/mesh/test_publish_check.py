"""One publish check (#24): every way an agent publishes asks `Contract.resolve` (or
`check_publish`, for a topic resolved when it was staged), and every refusal is the same
ContractError with the same sentence; nothing refused reaches the broker."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from lifeops_contract import contract
from lifeops_contract.schemas import ActivityCompleted, CharacterSheet, TimelineCompleteRequest
from mesh import Context, ContractError, Inbound
from mesh.outbox import OutboxRecord
from mesh.testing.brokers import InMemoryBroker
from mesh.testing.wait import eventually
from tests.conftest import StartAgent, user

ROOT = Path(__file__).resolve().parents[2]
REFUSAL = re.compile(r"^stats may not publish '[a-z_]+' on '[^']+'$")


def test_resolve_gives_the_entry_and_the_concrete_topic() -> None:
    c = contract()
    entry, topic = c.resolve("stats", "character_state", user_id="alice")
    assert entry is c.entry("character_state") and topic == "stats/character/alice"
    assert c.resolve("stats", "health")[1] == "stats/health"  # {agent}: the principal itself
    assert c.resolve("lifeops", "activities_log")[1] == "stats/activities/log"


@pytest.mark.parametrize(
    ("key", "params", "topic"),
    [
        ("activity_completed", {}, "lifeops/activity/completed"),  # not a publisher of it
        ("character_state", {"user_id": "get"}, "stats/character/get"),  # another key's topic
        ("health", {"agent": "lifeops"}, "lifeops/health"),  # another agent's {agent} topic
    ],
)
def test_resolve_refuses_with_one_sentence(key: str, params: dict[str, str], topic: str) -> None:
    with pytest.raises(ContractError) as caught:
        contract().resolve("stats", key, **params)
    assert str(caught.value) == f"stats may not publish {key!r} on {topic!r}"


async def test_every_publish_path_refuses_alike(start_agent: StartAgent, db_url: str) -> None:
    """publish by key, emit, an outbox record, a retained state, a request, a request with a
    receipt: the same ContractError sentence each time, and none of them reaches the broker
    (a publish that is allowed, sent after them all, arrives alone)."""
    broker = InMemoryBroker()
    u = user()
    done = ActivityCompleted(user_id=u, activity_type="run", activity_id="a1")
    ask = TimelineCompleteRequest(user_id=u, item_code="walk")
    refused_topics = ["lifeops/#", "stats/character/get", f"stats/character/{u}"]
    seen: list[str] = []
    watcher = broker.connect_as("tester")

    async def on(msg: Inbound) -> int:
        seen.append(msg.topic)
        return 0

    watcher.on_message = on
    await watcher.subscribe(refused_topics)
    await watcher.connect()
    errors: list[str] = []
    try:
        async with start_agent("stats", broker, db_url) as stats:
            sheet = CharacterSheet(user_id=u)
            attempts: list[Callable[[], Awaitable[Any]]] = [
                lambda: stats.publish("activity_completed", done),
                lambda: stats.publish("character_state", sheet, user_id="get"),
                lambda: stats.publisher.record(_record("character_state", f"lifeops/timeline/{u}")),
                lambda: stats.publisher.state(
                    f"lifeops/timeline/{u}", "character_state", b"{}", None
                ),
                lambda: stats.requester.request("timeline_complete", ask, timeout=1),
            ]
            for attempt in attempts:
                with pytest.raises(ContractError) as caught:
                    await attempt()
                errors.append(str(caught.value))
            async with stats.store.transaction() as tx:
                ctx = Context(
                    tx=tx,
                    agent="stats",
                    contract=stats.contract,
                    msg=Inbound(topic="stats/activities/log", payload=b"{}", qos=1),
                    params={},
                    trace_id="t",
                    relay=stats.relay,
                    receipts=stats.receipts,
                )
                with pytest.raises(ContractError) as caught:
                    await ctx.emit("activity_completed", done)
                errors.append(str(caught.value))
                with pytest.raises(ContractError) as caught:
                    await ctx.request_with_receipt("timeline_complete", ask, record_id="r1")
                errors.append(str(caught.value))
            await stats.publish("character_state", CharacterSheet(user_id=u), user_id=u)

            async def arrived() -> bool:
                return f"stats/character/{u}" in seen

            await eventually(arrived, what="the allowed publish")
    finally:
        await watcher.disconnect()
    assert len(errors) == 7 and all(REFUSAL.match(e) for e in errors), errors
    assert seen == [f"stats/character/{u}"]


def test_only_the_contract_decides_who_may_publish() -> None:
    """No runtime module but mesh/contract.py words a refusal or asks `publisher_allowed`."""
    elsewhere = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "mesh").rglob("*.py"))
        if path.name != "contract.py"
        and any(s in path.read_text() for s in ("may not publish", "publisher_allowed("))
    ]
    assert elsewhere == []


def _record(key: str, topic: str) -> OutboxRecord:
    return OutboxRecord(
        id="x",
        seq=1,
        topic_key=key,
        topic=topic,
        payload=b"{}",
        qos=1,
        retain=False,
        trace_id=None,
        created_at="2026-01-01T00:00:00+00:00",
    )
