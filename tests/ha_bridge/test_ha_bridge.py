"""The Home Assistant bridge through a real broker, with real Stats and LifeOps agents, on SQLite
and PostgreSQL: discovery configs, device states, buttons, stale-config clearing, HA's birth,
timeline changes. (A real Home Assistant reads these in test_homeassistant.py.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lifeops_agent.timeline import load_timeline
from lifeops_contract import contract as default_contract
from lifeops_contract.schemas import CharacterGetRequest, HaUserState, TimelineCompleteRequest
from mesh import codec
from mesh.broker.process import MosquittoProcess
from mesh.client import MeshClient
from mesh.testing.brokers import connect_as, transport_for
from mesh.testing.recorder import Recorder
from mesh.testing.wait import eventually
from mesh.transport import Inbound
from stats_agent.rules import load_rules
from tests.conftest import user

Start = Callable[..., Any]

CHARACTER = {"level", "total_xp", "xp_to_next_level", "achievements"}
ITEMS = [i.code for i in load_timeline().items]
STATS = set(load_rules().game.stats)  # a sheet lists every stat of the rules


class Retained:
    """A tester-account view of what the broker holds for HA: topic -> payload (live)."""

    def __init__(self, broker: MosquittoProcess) -> None:
        self.transport = transport_for(broker, "tester", prefix="ha-view")
        self.topics: dict[str, bytes] = {}
        self.log: list[Inbound] = []
        self.transport.on_message = self._on

    async def _on(self, msg: Inbound) -> int:
        self.log.append(msg)
        if msg.payload:
            self.topics[msg.topic] = msg.payload
        else:
            self.topics.pop(msg.topic, None)
        return 0

    def configs(self, node: str) -> dict[str, dict[str, Any]]:
        """`component/what` -> config of one discovery node."""
        out = {}
        for topic, payload in self.topics.items():
            levels = topic.split("/")
            if len(levels) == 5 and levels[0] == "homeassistant" and levels[2] == node:
                out[f"{levels[1]}/{levels[3]}"] = json.loads(payload)
        return out

    def state(self, uid: str) -> HaUserState | None:
        payload = self.topics.get(f"ha_bridge/user/{uid}")
        return codec.decode(payload, HaUserState) if payload else None

    def events(self, uid: str, kind: str) -> list[dict[str, Any]]:
        """The user's HA events (`levelup`, `stat_levelup` or `achievement`) so far, in order."""
        topic = f"ha_bridge/user/{uid}/{kind}"
        return [json.loads(m.payload) for m in self.log if m.topic == topic]

    async def __aenter__(self) -> Retained:
        await self.transport.subscribe(
            [
                "homeassistant/+/+/+/config",
                "ha_bridge/user/+",
                "ha_bridge/user/+/+",
                "ha_bridge/status",
            ]
        )
        await self.transport.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.disconnect()


def user_config_keys(stats: set[str] = STATS, items: list[str] = ITEMS) -> set[str]:
    keys = {f"sensor/{k}" for k in CHARACTER}
    keys |= {f"sensor/{s.lower()}_{k}" for s in stats for k in ("level", "xp")}
    keys |= {f"sensor/{i}_streak" for i in items} | {f"button/{i}_complete" for i in items}
    keys |= {"event/level_up", "event/stat_level_up", "event/achievement"}
    return keys


async def complete(tester: MeshClient, uid: str, item: str) -> Any:
    reply = await tester.request(
        "timeline_complete", TimelineCompleteRequest(user_id=uid, item_code=item)
    )
    assert reply.success, reply
    return reply


async def test_user_device_entities_and_state(
    own_broker: MosquittoProcess, new_db: Callable[[], str], start_agent: Start
) -> None:
    """A completion gives the user a device: character, stat, streak sensors and buttons, with
    stable ids, device and origin blocks, availability on the agents behind them."""
    uid = user()
    async with (
        start_agent("stats", own_broker, new_db()),
        start_agent("lifeops", own_broker, new_db()),
        start_agent("ha_bridge", own_broker, new_db()),
        MeshClient(own_broker.url("tester"), default_contract()) as tester,
        Retained(own_broker) as view,
    ):
        await complete(tester, uid, "morning_stretch")
        expected = user_config_keys()
        node = f"lifeops_{uid}"
        await eventually(
            lambda: _true(set(view.configs(node)) == expected),
            what=f"discovery configs {sorted(expected)}",
        )
        configs = view.configs(node)
        level = configs["sensor/level"]
        assert level["unique_id"] == f"lifeops_mesh:user:{uid}:level"
        assert level["object_id"] == f"lifeops_{uid}_level"
        assert level["default_entity_id"] == f"sensor.lifeops_{uid}_level"
        assert level["device"]["identifiers"] == [f"lifeops_mesh:user:{uid}"]
        assert level["device"]["name"] == f"LifeOps {uid}"
        assert level["origin"]["name"] == "LifeOps Mesh"
        assert [a["topic"] for a in level["availability"]] == [
            "ha_bridge/status",
            "ha_bridge/availability/stats",
        ]
        assert level["availability_mode"] == "all"
        assert "availability_topic" not in level
        total = configs["sensor/total_xp"]
        assert (total["state_class"], total["unit_of_measurement"]) == ("total_increasing", "XP")
        button = configs["button/morning_stretch_complete"]
        assert button["command_topic"] == "lifeops/timeline/complete"
        assert json.loads(button["payload_press"]) == {
            "user_id": uid,
            "item_code": "morning_stretch",
        }
        assert [a["topic"] for a in button["availability"]] == [
            "ha_bridge/status",
            "ha_bridge/availability/lifeops",
        ]
        # unique ids are unique
        ids = [c["unique_id"] for c in configs.values()]
        assert len(ids) == len(set(ids))
        await eventually(
            lambda: _true(
                (s := view.state(uid))
                and s.streaks.get("morning_stretch") == 1
                and s.total_xp == 15
            ),
            what="device state with the streak and the XP",
        )
        state = view.state(uid)
        assert state is not None
        sheet = (await tester.request("character_get", CharacterGetRequest(user_id=uid))).character
        assert state.level == sheet.level and state.total_xp == sheet.total_xp == 15
        assert state.xp_to_next_level == sheet.xp_to_next_level - sheet.xp_into_level
        assert state.stats["DEX"].xp == 10 and state.stats["STA"].xp == 5
        assert state.achievements == len(sheet.achievements) >= 1
        assert state.latest_achievement == sheet.latest_achievement
        # the agents' connectivity sensors
        mesh = view.configs("lifeops-mesh")
        assert set(mesh) == {
            "binary_sensor/stats",
            "binary_sensor/lifeops",
            "binary_sensor/ha_bridge",
        }
        stats_sensor = mesh["binary_sensor/stats"]
        assert stats_sensor["device_class"] == "connectivity"
        assert stats_sensor["state_topic"] == "ha_bridge/availability/stats"
        assert (stats_sensor["payload_on"], stats_sensor["payload_off"]) == ("online", "offline")


async def test_button_press_completes_through_lifeops(
    own_broker: MosquittoProcess, new_db: Callable[[], str], start_agent: Start
) -> None:
    """Home Assistant's account publishes the button's payload_press: LifeOps completes the item,
    Stats grants the XP, and the device state follows."""
    uid = user()
    async with (
        start_agent("stats", own_broker, new_db()),
        start_agent("lifeops", own_broker, new_db()),
        start_agent("ha_bridge", own_broker, new_db(), env={"LIFEOPS_HA_USERS": uid}),
        Retained(own_broker) as view,
    ):
        node = f"lifeops_{uid}"
        # a listed user gets buttons before any completion (the bridge asks LifeOps)
        button = await eventually(
            lambda: _async(view.configs(node).get("button/gym_session_complete")),
            what="gym_session button of a new user",
        )
        ha = await connect_as(own_broker, "homeassistant")
        try:
            await ha.publish(button["command_topic"], button["payload_press"].encode(), qos=1)
        finally:
            await ha.disconnect()
        state = await eventually(
            lambda: _async((s := view.state(uid)) and s.total_xp == 70 and s),
            what="70 XP from the gym session in the device state",
        )
        assert state.streaks["gym_session"] == 1
        # Stats' level-ups and achievement, republished for the user's HA event entities
        levelups = await eventually(
            lambda: _async(view.events(uid, "levelup")),
            what="the gym session's level-up on the user's event topic",
        )
        assert [(e["event_type"], e["previous_level"], e["new_level"]) for e in levelups] == [
            ("level_up", 1, state.level)
        ]
        assert levelups[0]["stat"] is None and levelups[0]["total_xp"] == 70
        stat_ups = await eventually(
            lambda: _async(view.events(uid, "stat_levelup")),
            what="the gym session's stat level-ups on their own topic",
        )
        assert {e["event_type"] for e in stat_ups} == {"stat_level_up"}
        assert {e["stat"] for e in stat_ups} <= STATS and all(e["stat"] for e in stat_ups)
        achievements = await eventually(
            lambda: _async(view.events(uid, "achievement")),
            what="the first achievement on the user's event topic",
        )
        assert achievements[0]["event_type"] == "achievement_unlocked"
        assert achievements[0]["achievement_code"] and achievements[0]["title"]
        assert not any(m.retain for m in view.log if m.topic.count("/") == 3)
        # the character's sensors came with its first sheet (published in the same flush as
        # the state, in any order)
        await eventually(
            lambda: _true(set(view.configs(node)) == user_config_keys()),
            what="character sensors of the new user",
        )


async def test_startup_clears_ghosts_and_keeps_what_is_current(
    own_broker: MosquittoProcess, new_db: Callable[[], str], start_agent: Start
) -> None:
    """At startup the bridge reads back its retained configs: ghosts (unknown users, removed
    stats) are cleared with an empty retained payload, other integrations' configs and current
    entities are left alone, and a restart publishes nothing new."""
    uid = user()
    bridge_db = new_db()
    async with (
        start_agent("stats", own_broker, new_db()),
        start_agent("lifeops", own_broker, new_db()),
    ):
        async with MeshClient(own_broker.url("tester"), default_contract()) as tester:
            await complete(tester, uid, "reading")
        planted = {
            "homeassistant/sensor/lifeops_ghost/level/config": b'{"unique_id": "g"}',
            f"homeassistant/sensor/lifeops_{uid}/zzz_level/config": b'{"unique_id": "z"}',
        }
        bridge_conn = await connect_as(own_broker, "ha_bridge")
        try:
            for topic, payload in planted.items():
                await bridge_conn.publish(topic, payload, qos=1, retain=True)
        finally:
            await bridge_conn.disconnect()
        async with Retained(own_broker) as view:
            async with start_agent("ha_bridge", own_broker, bridge_db):
                node = f"lifeops_{uid}"
                await eventually(
                    lambda: _true(
                        set(view.configs(node)) == user_config_keys()
                        and not (set(planted) & set(view.topics))
                    ),
                    what="ghost configs cleared, current ones published",
                )
            published = len(view.log)
            async with start_agent("ha_bridge", own_broker, bridge_db):
                await asyncio.sleep(1.0)
                assert set(view.configs(node)) == user_config_keys()
            again = [m for m in view.log[published:] if m.topic.startswith("homeassistant/")]
            assert again == [], f"a restart republished {[m.topic for m in again]}"


async def test_home_assistant_birth_republishes_everything(
    own_broker: MosquittoProcess, new_db: Callable[[], str], start_agent: Start
) -> None:
    """`online` on homeassistant/status: after a short random delay the bridge republishes its
    availability, every discovery config and every state (HA's own account sends the birth)."""
    uid = user()
    async with (
        start_agent("stats", own_broker, new_db()),
        start_agent("lifeops", own_broker, new_db()),
        start_agent("ha_bridge", own_broker, new_db()),
        MeshClient(own_broker.url("tester"), default_contract()) as tester,
        Retained(own_broker) as view,
    ):
        await complete(tester, uid, "walk")
        node = f"lifeops_{uid}"
        await eventually(lambda: _true(len(view.configs(node)) == len(user_config_keys())))
        await asyncio.sleep(0.5)
        mark = len(view.log)
        ha = await connect_as(own_broker, "homeassistant")
        try:
            await ha.publish("homeassistant/status", b"online", qos=1)
        finally:
            await ha.disconnect()

        def republished() -> set[str]:
            return {m.topic for m in view.log[mark:] if m.payload}

        expected = {
            f"homeassistant/{k.split('/')[0]}/{node}/{k.split('/')[1]}/config"
            for k in user_config_keys()
        } | {f"ha_bridge/user/{uid}", "ha_bridge/status"}
        await eventually(
            lambda: _true(expected <= republished()),
            timeout=10,
            what="configs, state and availability republished after the birth",
        )


async def test_timeline_change_adds_and_removes_entities(
    own_broker: MosquittoProcess, new_db: Callable[[], str], start_agent: Start, tmp_path: Path
) -> None:
    """LifeOps restarted with another timeline restates the retained timelines; the bridge
    then adds the new item's entities and clears the removed item's, without a restart."""
    uid = user()
    timeline = tmp_path / "timeline.toml"
    timeline.write_text(
        '[[items]]\ncode = "walk"\ntitle = "Walk"\nxp = { STA = 15 }\n'
        '[[items]]\ncode = "reading"\ntitle = "Reading"\nxp = { INT = 30 }\n'
    )
    lifeops_db = new_db()
    async with (
        start_agent("stats", own_broker, new_db()),
        start_agent("ha_bridge", own_broker, new_db()),
        Retained(own_broker) as view,
    ):
        node = f"lifeops_{uid}"
        async with start_agent(
            "lifeops", own_broker, lifeops_db, env={"LIFEOPS_TIMELINE_FILE": str(timeline)}
        ):
            async with MeshClient(own_broker.url("tester"), default_contract()) as tester:
                await complete(tester, uid, "walk")
            await eventually(
                lambda: _true(
                    set(view.configs(node)) == user_config_keys(STATS, ["walk", "reading"])
                )
            )
        timeline.write_text(
            '[[items]]\ncode = "walk"\ntitle = "Walk"\nxp = { STA = 15 }\n'
            '[[items]]\ncode = "yoga"\ntitle = "Yoga"\nxp = { DEX = 10 }\n'
        )
        async with start_agent(
            "lifeops", own_broker, lifeops_db, env={"LIFEOPS_TIMELINE_FILE": str(timeline)}
        ):
            await eventually(
                lambda: _true(set(view.configs(node)) == user_config_keys(STATS, ["walk", "yoga"])),
                what="reading's entities cleared, yoga's added",
            )
            await eventually(
                lambda: _true((st := view.state(uid)) and st.streaks == {"walk": 1, "yoga": 0}),
                what="the device state lists walk and yoga",
            )


async def test_bad_state_payload_is_dead_lettered(
    own_broker: MosquittoProcess, new_db: Callable[[], str], start_agent: Start
) -> None:
    """A character state the bridge cannot read, or one whose user is not its topic's, goes to
    its dead-letter topic; the bridge keeps going."""
    async with start_agent("ha_bridge", own_broker, new_db()) as bridge:
        dlq = transport_for(own_broker, "tester", prefix="dlq")
        seen: list[Inbound] = []

        async def on(msg: Inbound) -> int:
            seen.append(msg)
            return 0

        dlq.on_message = on
        await dlq.subscribe(["mesh/dlq/ha_bridge"])
        await dlq.connect()
        try:
            stats = await connect_as(own_broker, "stats")  # the only publisher of sheets
            try:
                await stats.publish("stats/character/bob", b"{not json", qos=1)
                await stats.publish(
                    "stats/character/bob", b'{"user_id": "alice", "level": 2}', qos=1
                )
            finally:
                await stats.disconnect()
            ha = await connect_as(own_broker, "homeassistant")
            try:
                await ha.publish("homeassistant/status", b'{"online": true}', qos=1)
                await ha.publish("homeassistant/status", b"\xff\xfe", qos=1)
            finally:
                await ha.disconnect()
            await eventually(lambda: _true(len(seen) == 4), what="four dead letters")
            letters = sorted(
                (json.loads(m.payload)["topic"], json.loads(m.payload)["error"]["code"])
                for m in seen
            )
            assert [t for t, _ in letters] == ["homeassistant/status"] * 2 + [
                "stats/character/bob"
            ] * 2
            assert {c for t, c in letters if t == "stats/character/bob"} == {
                "invalid_json",
                "user_mismatch",
            }
            assert bridge.transport.connected
        finally:
            await dlq.disconnect()


async def _true(value: object) -> bool:
    return bool(value)


async def _async(value: Any) -> Any:
    return value


async def test_topics_caught_by_wider_filters_are_left_to_their_owners(
    own_broker: MosquittoProcess, new_db: Callable[[], str], start_agent: Start
) -> None:
    """The bridge's stats/character/+ also matches the request topic stats/character/get, and
    every agent's +/status matches homeassistant/status: such messages are not answered, not
    dead-lettered and not delivered twice; their own subscribers handle them."""
    from mesh.topics import covers

    async with (
        start_agent("stats", own_broker, new_db()),
        start_agent("lifeops", own_broker, new_db()),
        start_agent("ha_bridge", own_broker, new_db()) as bridge,
    ):
        filters = bridge.subscriptions()
        assert not [(f, g) for f in filters for g in filters if f != g and covers(g, f)]
        assert "homeassistant/status" not in filters and "+/status" in filters
        watcher = transport_for(own_broker, "tester", prefix="watch")
        seen: list[Inbound] = []

        async def on(msg: Inbound) -> int:
            seen.append(msg)
            return 0

        watcher.on_message = on
        await watcher.subscribe(["mesh/dlq/+", "reply/tester/+"])
        await watcher.connect()
        try:
            await watcher.publish(
                "stats/character/get",
                b'{"user_id": "nobody"}',
                qos=1,
                response_topic="reply/tester/overlap",
                correlation_data=b"c1",
            )
            ha = await connect_as(own_broker, "homeassistant")
            try:
                await ha.publish("homeassistant/status", b"online", qos=1)
            finally:
                await ha.disconnect()
            await eventually(lambda: _true(seen), what="Stats' reply")
            await asyncio.sleep(1.0)
            replies = [m for m in seen if m.topic.startswith("reply/")]
            assert len(replies) == 1  # Stats' answer only
            assert json.loads(replies[0].payload)["error"]["code"] == "not_found"
            # Stats dead-letters the refused request itself; nobody else writes a dead letter
            assert {m.topic for m in seen} - {"reply/tester/overlap"} <= {"mesh/dlq/stats"}
        finally:
            await watcher.disconnect()


def test_filter_cover() -> None:
    from mesh.topics import covers

    assert covers("+/status", "homeassistant/status")
    assert not covers("homeassistant/status", "+/status")
    assert covers("a/#", "a/b/c") and covers("a/+", "a/+")
    assert not covers("a/+", "a/#") and not covers("a/+", "a/b/c")
    assert not covers("$share/g/a/+", "a/b") and not covers("+/status", "reply/x/y")


def _sheet(uid: str) -> bytes:
    example = json.loads(default_contract().entry("character_state").example or "{}")
    return json.dumps({**example, "user_id": uid}).encode()


def _entity_ids(view: Retained) -> list[str]:
    """The entity ids every discovery config on the broker asks for."""
    return [
        json.loads(p)["default_entity_id"]
        for t, p in view.topics.items()
        if t.startswith("homeassistant/") and t.endswith("/config")
    ]


async def test_two_spellings_of_one_user_never_share_entity_ids(
    own_broker: MosquittoProcess, new_db: Callable[[], str], start_agent: Start
) -> None:
    """`<u>-Alice` and `<u>-alice` would get the same entity ids: the spelling the bridge
    stored first keeps them, the other's sheet is dead-lettered naming both ids and gets no
    entities; a bridge starting afresh with both sheets retained on the broker publishes one
    set of entity ids, each once."""
    base = user()
    first, other = f"{base}-Alice", f"{base}-alice"
    node, other_node = f"lifeops_{first}", f"lifeops_{other}"  # entity ids: lifeops_<u>_alice_*
    async with (
        Retained(own_broker) as view,
        Recorder(own_broker, ["mesh/dlq/ha_bridge"]) as rec,
    ):
        stats = await connect_as(own_broker, "stats")  # the only publisher of sheets
        try:
            async with start_agent("ha_bridge", own_broker, new_db()):
                await stats.publish(f"stats/character/{first}", _sheet(first), qos=1, retain=True)
                await eventually(lambda: _true(view.configs(node)), what="the first's entities")
                await stats.publish(f"stats/character/{other}", _sheet(other), qos=1, retain=True)

                async def refused() -> list[Any]:
                    letters = [json.loads(m.payload) for m in rec.on("mesh/dlq/ha_bridge")]
                    return [d for d in letters if d["error"]["code"] == "user_id_taken"]

                (letter,) = await eventually(refused, what="the other spelling's dead letter")
                assert repr(other) in letter["error"]["message"]
                assert repr(first) in letter["error"]["message"]
                await asyncio.sleep(0.5)
                ids = _entity_ids(view)
                assert ids and len(ids) == len(set(ids)), ids
                assert view.configs(other_node) == {} and view.state(other) is None
            async with start_agent("ha_bridge", own_broker, new_db()):  # both retained now
                await asyncio.sleep(1.5)
                ids = _entity_ids(view)
                assert ids and len(ids) == len(set(ids)), ids
                assert bool(view.configs(node)) != bool(view.configs(other_node))
        finally:
            for uid in (first, other):
                await stats.publish(f"stats/character/{uid}", b"", qos=1, retain=True)
            await stats.disconnect()
