"""The bridge's discovery payloads, as pure functions: golden files and tables.

`golden/user_and_mesh_entities.json` is what the first shipped bridge published for one user
(two stats, one timeline item) and the agents' device; Home Assistant keys its registries on
these ids, so they may never change without a migration. The tables below name, per entity,
what HA's validation cares about (component, unit, device and state class).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from ha_bridge.entities import (
    EntityBuilder,
    achievement_event,
    encode_config,
    is_own_node,
    levelup_event,
    user_slug,
)
from lifeops_contract import contract, with_discovery_prefix
from lifeops_contract.schemas import (
    AchievementUnlocked,
    CharacterSheet,
    LevelUp,
    OuraSyncStatus,
    StatSheet,
    TimelineDay,
    TimelineItemState,
)
from mesh import codec

GOLDEN = Path(__file__).parent / "golden" / "user_and_mesh_entities.json"
SHEET = CharacterSheet(user_id="alice", stats={"STR": StatSheet(xp=50), "DEX": StatSheet()})
TIMELINE = TimelineDay(
    user_id="alice",
    date=dt.date(2026, 11, 27),
    timezone="UTC",
    items=[TimelineItemState(code="walk", title="Walk", activity_type="timeline_walk", xp={})],
)

# The "Oura sync" sensor came later (issue 23): appended, the ids above unchanged.
OURA = OuraSyncStatus(user_id="alice", state="membership", reason="renew it")


def _payloads(builder: EntityBuilder, user: str) -> list[tuple[str, Any]]:
    entities = builder.user_entities(user, SHEET, TIMELINE, OURA) + builder.mesh_entities()
    return [(e.topic, json.loads(encode_config(e))) for e in entities]


def test_payloads_equal_the_golden_file() -> None:
    """Every topic and discovery payload, byte for byte as JSON, equals the golden file."""
    builder = EntityBuilder(contract(), list(contract().agents))
    expected = [tuple(row) for row in json.loads(GOLDEN.read_text())]
    assert [list(p) for p in _payloads(builder, "Alice-1")] == [list(p) for p in expected]


ROWS = [
    # what, component, unit, state class, device class
    ("level", "sensor", None, "measurement", None),
    ("total_xp", "sensor", "XP", "total_increasing", None),
    ("xp_to_next_level", "sensor", "XP", "measurement", None),
    ("achievements", "sensor", None, "measurement", None),
    ("str_level", "sensor", None, "measurement", None),
    ("str_xp", "sensor", "XP", "total_increasing", None),
    ("walk_streak", "sensor", "d", "measurement", None),
    ("walk_complete", "button", None, None, None),
    ("level_up", "event", None, None, None),
    ("stat_level_up", "event", None, None, None),
    ("achievement", "event", None, None, None),
    ("oura_sync", "sensor", None, None, None),
]


@pytest.mark.parametrize(("what", "component", "unit", "state_class", "device_class"), ROWS)
def test_each_entity_has_the_keys_home_assistant_validates(
    what: str, component: str, unit: str | None, state_class: str | None, device_class: str | None
) -> None:
    """ids from the user id only; entity id through object_id and default_entity_id; units
    that fit their (absent) device class; availability on the agents behind the entity."""
    builder = EntityBuilder(contract(), list(contract().agents))
    by_what = {
        e.topic.split("/")[3]: e for e in builder.user_entities("Alice-1", SHEET, TIMELINE, OURA)
    }
    e = by_what[what]
    c = e.config
    assert e.topic == f"homeassistant/{component}/lifeops_Alice-1/{what}/config"
    assert c.unique_id == f"lifeops_mesh:user:Alice-1:{what}"
    assert (
        c.default_entity_id == f"{component}.lifeops_alice_1_{what}" == f"{component}.{c.object_id}"
    )
    assert (c.unit_of_measurement, c.state_class, c.device_class) == (
        unit,
        state_class,
        device_class,
    )
    agents = [a.topic for a in c.availability or []]
    behind = "lifeops" if what.startswith(("walk", "oura")) else "stats"
    want = ["ha_bridge/status", f"ha_bridge/availability/{behind}"]
    assert agents == want and c.availability_mode == "all"


def test_button_press_is_a_timeline_completion() -> None:
    """The button's payload_press is a valid lifeops/timeline/complete request for its item."""
    builder = EntityBuilder(contract(), list(contract().agents))
    (button,) = [e for e in builder.user_entities("bo", None, TIMELINE) if "button" in e.topic]
    assert button.config.command_topic == "lifeops/timeline/complete"
    assert json.loads(button.config.payload_press or "") == {"user_id": "bo", "item_code": "walk"}


NOW = dt.datetime(2026, 11, 27, 18, 0, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("stat", "what", "key", "event_type"),
    [
        (None, "level_up", "ha_levelup", "level_up"),
        ("STR", "stat_level_up", "ha_stat_levelup", "stat_level_up"),
    ],
)
def test_level_up_event_is_what_the_event_entity_reads(
    stat: str | None, what: str, key: str, event_type: str
) -> None:
    """A level-up on the user's event topic (the character's and the stats' apart): a JSON
    object whose `event_type` is its entity's one event type (HA rejects others), the rest of
    Stats' fields as attributes."""
    c = contract()
    builder = EntityBuilder(c, list(c.agents))
    by_what = {e.topic.split("/")[3]: e for e in builder.user_entities("bo", SHEET, None)}
    entity = by_what[what]
    up = LevelUp(
        event_id="lvl:bo:x", user_id="bo", new_level=3, previous_level=2, total_xp=90,
        activity_id="a1", stat=stat, occurred_at=NOW,
    )  # fmt: skip
    payload = json.loads(codec.encode(levelup_event(up)))
    assert payload == {
        "event_type": event_type,
        "event_id": "lvl:bo:x",
        "new_level": 3,
        "previous_level": 2,
        "stat": stat,
        "total_xp": 90,
        "occurred_at": "2026-11-27T18:00:01Z",
    }
    assert entity.config.event_types == [event_type]
    assert entity.config.state_topic == c.topic(key, user_id="bo")
    assert c.entry(key).retain is False  # HA ignores retained events


def test_achievement_event_is_what_the_event_entity_reads() -> None:
    """An achievement on the user's event topic, typed `achievement_unlocked`."""
    c = contract()
    builder = EntityBuilder(c, list(c.agents))
    (entity,) = [e for e in builder.user_entities("bo", SHEET, None) if "/achievement/" in e.topic]
    won = AchievementUnlocked(
        event_id="ach:bo:first", user_id="bo", achievement_code="first_activity",
        title="First steps", activity_id="a1", awarded_at=NOW,
    )  # fmt: skip
    payload = json.loads(codec.encode(achievement_event(won)))
    assert payload["event_type"] in (entity.config.event_types or []) == ["achievement_unlocked"]
    assert (payload["achievement_code"], payload["title"]) == ("first_activity", "First steps")
    assert entity.config.state_topic == c.topic("ha_achievement", user_id="bo")
    assert entity.config.unique_id == "lifeops_mesh:user:bo:achievement"


def test_what_a_user_has_decides_the_entities() -> None:
    """No sheet: no character sensors; no timeline: no streaks or buttons; neither: nothing."""
    builder = EntityBuilder(contract(), list(contract().agents))
    assert builder.user_entities("bo", None, None) == []
    only_sheet = {e.topic.split("/")[3] for e in builder.user_entities("bo", SHEET, None)}
    assert "walk_complete" not in only_sheet and {"level", "level_up"} <= only_sheet
    only_timeline = {e.topic.split("/")[3] for e in builder.user_entities("bo", None, TIMELINE)}
    assert only_timeline == {"walk_streak", "walk_complete"}


def test_another_discovery_prefix_moves_only_the_config_topics() -> None:
    """LIFEOPS_HA_DISCOVERY_PREFIX=hass: configs under hass/, payloads otherwise the same."""
    moved = with_discovery_prefix(contract(), "hass")
    default = _payloads(EntityBuilder(contract(), list(contract().agents)), "bo")
    hass = _payloads(EntityBuilder(moved, list(moved.agents)), "bo")
    assert [t for t, _ in hass] == [t.replace("homeassistant/", "hass/", 1) for t, _ in default]
    assert [p for _, p in hass] == [p for _, p in default]


def test_node_ids_and_slugs() -> None:
    """The bridge owns `lifeops_*` and `lifeops-mesh` nodes only; slugs follow HA's rules."""
    assert is_own_node("lifeops_alice") and is_own_node("lifeops-mesh")
    assert not is_own_node("zigbee2mqtt") and not is_own_node("lifeopsx")
    assert user_slug("Alice-1.x") == "alice_1_x"


def test_device_based_discovery_is_one_message_with_the_same_entities() -> None:
    """LIFEOPS_HA_DISCOVERY=device: one payload per device instead of one per entity. Each
    component is the per-component config without device and origin (said once) and with its
    platform `p`; ids, keys and availability are the same, so HA gives the same entity ids."""
    builder = EntityBuilder(contract(), list(contract().agents))
    per_entity = builder.user_entities("alice", SHEET, TIMELINE)
    one = builder.device_config(per_entity)
    assert one.topic == "homeassistant/device/lifeops_alice/config"
    payload = json.loads(encode_config(one))
    assert set(payload) == {"dev", "o", "cmps"}
    assert payload["dev"]["identifiers"] == ["lifeops_mesh:user:alice"]
    assert payload["o"]["name"] == "LifeOps Mesh"
    assert len(payload["cmps"]) == len(per_entity)
    for e in per_entity:
        component, what = e.topic.split("/")[1], e.topic.split("/")[3]
        alone = json.loads(encode_config(e))
        assert alone.pop("device") == payload["dev"] and alone.pop("origin") == payload["o"]
        assert payload["cmps"][what] == {**alone, "p": component}, what
    # the measure the issue asks for: discovery messages for this user, both ways
    # 4 character sensors, 2 per stat, 3 event entities, a streak and a button per item
    assert len(per_entity) == 4 + 2 * len(SHEET.stats) + 3 + 2 * len(TIMELINE.items) == 13
    mesh = builder.device_config(builder.mesh_entities())
    assert mesh.topic == "homeassistant/device/lifeops-mesh/config"
    assert len(json.loads(encode_config(mesh))["cmps"]) == len(builder.mesh_entities())
    codec.decode(encode_config(one), contract().entry("ha_device_discovery").schema_type)
