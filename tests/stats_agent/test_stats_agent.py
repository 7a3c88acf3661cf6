"""The Stats agent through the real broker, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import pytest

from lifeops_contract import contract as default_contract
from lifeops_contract.schemas import (
    ActivityCompleted,
    ActivityLogReply,
    ActivityLogRequest,
    CharacterGetRequest,
    CharacterReply,
    CharacterSheet,
    LevelUp,
)
from mesh import codec
from mesh.agent import Agent
from mesh.broker.process import MosquittoProcess
from mesh.client import MeshClient
from mesh.schemas import DeadLetter
from mesh.testing.mqtt_cli import MosquittoCli
from mesh.testing.recorder import Recorder
from mesh.testing.wait import eventually
from mesh.transport import Inbound
from tests.conftest import user


async def test_seed_contract_log_activity(stats: Agent, tester: MeshClient) -> None:
    """The seed's contract test: a gym session answers success with xp_granted as a dict."""
    uid = user()
    reply = await tester.request(
        "activities_log",
        ActivityLogRequest(
            user_id=uid, activity_type="gym_session", source="manual", source_ref="gym-1"
        ),
    )
    assert isinstance(reply, ActivityLogReply)
    assert reply.success is True
    assert reply.xp_granted == {"STR": 50, "STA": 20}
    assert reply.message == "Gained XP: STR+50, STA+20"
    assert reply.activity_id
    assert reply.total_xp == 70
    assert reply.character_level_up is True and reply.new_level == 2  # 70 XP >= 25 for level 2
    assert reply.stat_level_ups == {"STR": 2}  # STR 50 passes 25; STA 20 does not
    assert reply.achievements == ["first_activity"]
    sheet = await tester.request("character_get", CharacterGetRequest(user_id=uid))
    assert sheet.success and sheet.total_xp == 70
    assert sheet.character.stats["STR"].xp == 50 and sheet.character.stats["DEX"].xp == 0


async def test_duplicates_grant_nothing_and_return_the_original(
    stats: Agent, tester: MeshClient
) -> None:
    """Same activity_id twice, or the same (source, source_ref) twice: one grant, same answer."""
    uid = user()
    aid = str(uuid.uuid4())
    first = await tester.request(
        "activities_log", ActivityLogRequest(user_id=uid, activity_type="reading", activity_id=aid)
    )
    again = await tester.request(
        "activities_log", ActivityLogRequest(user_id=uid, activity_type="reading", activity_id=aid)
    )
    assert again.duplicate and not first.duplicate
    assert again.activity_id == first.activity_id and again.xp_granted == first.xp_granted
    by_ref = [
        await tester.request(
            "activities_log",
            ActivityLogRequest(
                user_id=uid, activity_type="yoga", source="challengemode", source_ref="c-9"
            ),
        )
        for _ in range(3)
    ]
    assert [r.duplicate for r in by_ref] == [False, True, True]
    assert len({r.activity_id for r in by_ref}) == 1
    # Concurrent duplicates land in one group-commit batch: still granted once.
    aid2 = str(uuid.uuid4())
    replies = await asyncio.gather(
        *(
            tester.request(
                "activities_log",
                ActivityLogRequest(user_id=uid, activity_type="meditation", activity_id=aid2),
            )
            for _ in range(10)
        )
    )
    assert sum(not r.duplicate for r in replies) == 1
    sheet = await tester.request("character_get", CharacterGetRequest(user_id=uid))
    assert sheet.total_xp == 30 + 35 + 20


async def test_custom_xp_overrides_and_multi_level_grant(stats: Agent, tester: MeshClient) -> None:
    """custom_xp replaces the rule; one large grant raises several levels at once."""
    uid = user()
    reply = await tester.request(
        "activities_log",
        ActivityLogRequest(user_id=uid, activity_type="anything_custom", custom_xp={"INT": 1000}),
    )
    assert reply.xp_granted == {"INT": 1000}
    # 25+50+75+100+150 = 400 to reach 6; then 210 and 220 -> level 8 at 830 (next at 1070)
    assert reply.new_level == 8 and reply.character_level_up
    assert reply.stat_level_ups == {"INT": 8}
    assert set(reply.achievements) == {"first_activity", "level_5", "stat_xp_1000"}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"user_id": "bob", "activity_type": "juggling"}, "unknown_activity_type"),
        ({"user_id": "bob", "activity_type": "x", "custom_xp": {"LUCK": 5}}, "invalid_custom_xp"),
        ({"user_id": "bob", "activity_type": "x", "custom_xp": {"STR": 0}}, "invalid_custom_xp"),
        (
            {"user_id": "bob", "activity_type": "x", "custom_xp": {"STR": 10**9}},
            "invalid_custom_xp",
        ),
        ({"user_id": "a/b", "activity_type": "gym_session"}, "invalid_user_id"),
        ({"user_id": "", "activity_type": "gym_session"}, "invalid_user_id"),
        ({"user_id": "get", "activity_type": "gym_session"}, "invalid_user_id"),
        ({"user_id": "x" * 65, "activity_type": "gym_session"}, "invalid_user_id"),
        ({"activity_type": "gym_session"}, "validation_error"),
        ({"user_id": 5, "activity_type": "gym_session"}, "validation_error"),
        ({"user_id": "bob", "activity_type": "gym_session", "source": "web"}, "validation_error"),
    ],
)
async def test_bad_requests_get_error_replies_and_dead_letters(
    stats: Agent, broker: MosquittoProcess, body: dict[str, object], code: str
) -> None:
    """Every kind of bad input: error reply naming the problem, a dead letter, agent unharmed."""
    async with Recorder(broker, ["mesh/dlq/stats", "reply/tester/+"]) as rec:
        cid = uuid.uuid4().bytes
        await rec.transport.publish(
            "stats/activities/log",
            codec.encode(body),
            response_topic="reply/tester/bad",
            correlation_data=cid,
        )
        replies = await eventually(lambda: _ready(rec.on("reply/tester/bad")), what="error reply")
        reply = codec.decode(replies[0].payload, ActivityLogReply)
        assert replies[0].correlation_data == cid
        assert reply.success is False and reply.error is not None
        assert reply.error.code == code
        assert reply.error.message
        dead = await eventually(lambda: _ready(rec.on("mesh/dlq/stats")), what="dead letter")
        record = codec.decode(dead[0].payload, DeadLetter)
        assert record.error.code == code and record.topic == "stats/activities/log"
        assert record.correlation_data == cid.hex()
    # still serving
    async with MeshClient(broker.url("tester"), default_contract()) as client:
        ok = await client.request(
            "activities_log", ActivityLogRequest(user_id=user(), activity_type="reading")
        )
        assert ok.success


async def _ready(items: list[Inbound]) -> list[Inbound]:
    return items


async def test_unknown_user_is_not_found(stats: Agent, tester: MeshClient) -> None:
    """stats/character/get for a user without a character is an error reply `not_found`."""
    reply = await tester.request("character_get", CharacterGetRequest(user_id=user()))
    assert reply.success is False and reply.error.code == "not_found"


async def test_events_and_retained_state_published_once(
    stats: Agent, broker: MosquittoProcess, tester: MeshClient
) -> None:
    """Level-up and achievement events go out once per real change; the sheet is retained."""
    uid = user()
    async with Recorder(broker, ["stats/levelup", "stats/achievement"]) as rec:
        for i in range(3):
            await tester.request(
                "activities_log",
                ActivityLogRequest(user_id=uid, activity_type="gym_session", source_ref=f"g{i}"),
            )
        await tester.request(
            "activities_log",
            ActivityLogRequest(user_id=uid, activity_type="gym_session", source_ref="g0"),
        )  # duplicate
        await asyncio.sleep(0.5)
        ups = [codec.decode(m.payload, LevelUp) for m in rec.on("stats/levelup")]
        mine = [u for u in ups if u.user_id == uid]
        ids = [u.event_id for u in mine]
        assert len(ids) == len(set(ids))
        char = [u for u in mine if u.stat is None]
        # 210 XP: levels 2 (25), 3 (75), 4 (150) -> three character level-ups
        assert [u.new_level for u in char] == [2, 3, 4]
        ach = [m for m in rec.on("stats/achievement") if uid.encode() in m.payload]
        assert len(ach) == 1
    async with Recorder(broker, [f"stats/character/{uid}"]) as rec:
        msgs = await eventually(
            lambda: _ready(rec.on(f"stats/character/{uid}")), what="retained sheet"
        )
        assert msgs[0].retain
        sheet = codec.decode(msgs[-1].payload, CharacterSheet)
        assert sheet.total_xp == 210 and sheet.level == 4


async def test_lifeops_completion_event_answers_on_response_topic(
    stats: Agent, broker: MosquittoProcess
) -> None:
    """lifeops/activity/completed with a response topic: processed once, result returned there."""
    uid = user()
    ev = ActivityCompleted(
        activity_id=str(uuid.uuid4()),
        user_id=uid,
        activity_type="timeline_morning_stretch",
        custom_xp={"DEX": 10},
        streak=7,
        source_ref=f"{uid}:morning_stretch:2026-11-27",
    )
    async with Recorder(broker, ["reply/lifeops/+"], principal="lifeops") as rec:
        for _ in range(2):
            await rec.transport.publish(
                "lifeops/activity/completed",
                codec.encode(ev),
                response_topic="reply/lifeops/lo",
                correlation_data=b"c1",
            )
        await eventually(lambda: _ready(rec.on("reply/lifeops/lo")[1:]), what="two replies")
        msgs = rec.on("reply/lifeops/lo")
        first, second = (codec.decode(m.payload, ActivityLogReply) for m in msgs[:2])
    assert first.xp_granted == {"DEX": 10} and first.activity_id == ev.activity_id
    assert "streak_7" in first.achievements
    assert second.duplicate and second.xp_granted == first.xp_granted


async def test_oura_sync_grants_once_per_day(
    stats: Agent, broker: MosquittoProcess, tester: MeshClient
) -> None:
    """lifeops/oura/synced grants XP by the rules, once per user and day."""
    uid = user()
    body = {
        "user_id": uid,
        "date": "2026-11-26",
        "scores": {"sleep": 80, "readiness": 70, "activity": 50},
    }
    async with Recorder(broker, [], principal="lifeops") as rec:
        for _ in range(2):
            await rec.transport.publish("lifeops/oura/synced", codec.encode(body))

    async def total() -> int:
        r = await tester.request("character_get", CharacterGetRequest(user_id=uid))
        return r.total_xp if r.success else 0

    # readiness 70*0.5=35 STA, sleep 80*0.3=24 WIS, activity 50*0.3=15 DEX
    assert await eventually(total, what="oura XP") == 74
    await asyncio.sleep(0.3)
    assert await total() == 74


async def test_oura_revisions_in_any_order_grant_the_best_version_once(
    stats: Agent, broker: MosquittoProcess, tester: MeshClient
) -> None:
    """Versions of one day arriving out of order (revision 2, then 0, then 1, each twice):
    per stat, the XP of the best version, once; the day is one activity."""
    uid = user()

    def version(revision: int, sleep: int, readiness: int, activity: int | None) -> bytes:
        scores = {"sleep": sleep, "readiness": readiness, "activity": activity}
        body = {"user_id": uid, "date": "2026-11-26", "scores": scores, "revision": revision}
        return codec.encode(body)

    async with Recorder(broker, [], principal="lifeops") as rec:
        for payload in (version(2, 60, 70, 50), version(0, 80, 70, None), version(1, 80, 90, 50)):
            for _ in range(2):
                await rec.transport.publish("lifeops/oura/synced", payload)

    async def sheet() -> CharacterReply | None:
        r: CharacterReply = await tester.request("character_get", CharacterGetRequest(user_id=uid))
        return r if r.success and r.total_xp == 24 + 45 + 15 else None

    # best per stat: WIS 80*0.3=24 (rev 0/1), STA 90*0.5=45 (rev 1), DEX 50*0.3=15 (rev 1/2)
    await eventually(sheet, what="XP of the best versions")
    await asyncio.sleep(0.3)  # the repeats and late versions are in: nothing more
    again = await sheet()
    assert again is not None and again.character is not None
    assert again.character.activities == 1


async def test_mosquitto_rr_round_trip(stats: Agent, broker: MosquittoProcess) -> None:
    """The mosquitto_rr command of docs/contract.md works against the agent."""
    uid = user()
    body = msgspec.json.encode({"user_id": uid, "activity_type": "gym_session"}).decode()
    rr = await MosquittoCli(broker).rr(
        "stats/activities/log", body, response_topic="reply/tester/rr"
    )
    assert rr.returncode == 0, rr.stderr
    out = rr.stdout
    reply = codec.decode(out.strip(), ActivityLogReply)
    assert reply.success and reply.message == "Gained XP: STR+50, STA+20"
