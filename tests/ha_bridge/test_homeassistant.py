"""Real Home Assistant cores against the test Mosquitto: 2024.3.3 (its own cached virtualenv) and
2026.11.0 (python3.14 in a cached Debian root, under chroot), the same scenario on each.

What HA itself created is checked: entity ids (2026.11 ignores object_id: they come from
default_entity_id), unique ids and device grouping (HA's registries), numeric states equal to the
character sheet, availability, no rejected discovery payloads in HA's log; a button pressed
through HA's REST API completes the item, grants XP and updates the sensors; the level-up event
entity shows the level-up; both documented automations (docs/homeassistant/automations.yaml: a raw
MQTT trigger and an event-entity trigger) fire on it; every entity of the documented dashboard
exists; and after an HA restart, a bridge restart and a broker restart every entity is available
again and shows its current value, without the event automation firing again.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lifeops_agent.timeline import load_timeline
from lifeops_contract import contract as default_contract
from lifeops_contract.schemas import (
    ActivityLogRequest,
    CharacterGetRequest,
    CharacterSheet,
    TimelineCompleteRequest,
)
from mesh.broker.process import MosquittoProcess
from mesh.client import MeshClient
from mesh.testing.brokers import transport_for
from mesh.testing.mqtt_cli import MosquittoCli
from mesh.testing.wait import eventually
from mesh.transport import Inbound
from stats_agent.rules import load_rules
from tests.support.homeassistant import (
    RELEASES,
    VERSIONS,
    HomeAssistantProcess,
    debian_mirror,
    mqtt_config_entry,
)

pytestmark = pytest.mark.timeout(600)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "homeassistant"
UID = "alice"  # the documented dashboard's user; this test has a broker of its own
Start = Callable[..., Any]
EVENTS = ("level_up", "stat_level_up", "achievement")
LEVEL_UP = f"event.lifeops_{UID}_level_up"
STAT_LEVEL_UP = f"event.lifeops_{UID}_stat_level_up"
ACHIEVEMENT = f"event.lifeops_{UID}_achievement"


def expected_entities() -> dict[str, str]:
    """entity id -> unique id of everything the bridge should create for alice and the mesh."""
    what = ["level", "total_xp", "xp_to_next_level", "achievements"]
    what += [f"{s.lower()}_{k}" for s in load_rules().game.stats for k in ("level", "xp")]
    items = [i.code for i in load_timeline().items]
    out = {f"sensor.lifeops_{UID}_{w}": f"lifeops_mesh:user:{UID}:{w}" for w in what}
    out |= {
        f"sensor.lifeops_{UID}_{i}_streak": f"lifeops_mesh:user:{UID}:{i}_streak" for i in items
    }
    out |= {
        f"button.lifeops_{UID}_{i}_complete": f"lifeops_mesh:user:{UID}:{i}_complete" for i in items
    }
    out |= {f"event.lifeops_{UID}_{w}": f"lifeops_mesh:user:{UID}:{w}" for w in EVENTS}
    out |= {
        f"binary_sensor.lifeops_mesh_{a}": f"lifeops_mesh:agent:{a}"
        for a in ("stats", "lifeops", "ha_bridge")
    }
    return out


async def sheet_of(client: MeshClient) -> CharacterSheet:
    reply = await client.request("character_get", CharacterGetRequest(user_id=UID))
    assert reply.success and reply.character is not None, reply
    sheet: CharacterSheet = reply.character
    return sheet


def matches_sheet(
    states: dict[str, dict[str, Any]], sheet: CharacterSheet, streaks: dict[str, int]
) -> bool:
    want = {
        "level": sheet.level,
        "total_xp": sheet.total_xp,
        "xp_to_next_level": sheet.xp_to_next_level - sheet.xp_into_level,
        "achievements": len(sheet.achievements),
    }
    for stat, s in sheet.stats.items():
        want[f"{stat.lower()}_level"] = s.level
        want[f"{stat.lower()}_xp"] = s.xp
    for code, n in streaks.items():
        want[f"{code}_streak"] = n
    for what, value in want.items():
        state = states.get(f"sensor.lifeops_{UID}_{what}")
        if state is None or state["state"] != str(value):
            return False
    return True


def all_available(states: dict[str, dict[str, Any]]) -> bool:
    """Every entity there and available; sensors also known (a button's or an event's state is
    the time of its last press or event: `unknown` until then)."""
    return all(
        e in states
        and states[e]["state"] != "unavailable"
        and (e.startswith(("button.", "event.")) or states[e]["state"] != "unknown")
        for e in expected_entities()
    )


def test_mqtt_config_entry_of_each_release() -> None:
    """2024.3: entry 1.1, everything in data; 2026.11: entry 2.1, broker and protocol 5 in
    data, discovery and birth in options (what their UIs write)."""
    old = mqtt_config_entry(RELEASES["2024.3.3"].layout, 1883, "ha", "pw")
    assert (old["version"], old["minor_version"], old["options"]) == (1, 1, {})
    assert old["data"] == {
        "broker": "127.0.0.1", "port": 1883, "username": "ha", "password": "pw", "discovery": True,
    }  # fmt: skip
    new = mqtt_config_entry(RELEASES["2026.11.0"].layout, 1883, "ha", "pw")
    assert (new["version"], new["minor_version"]) == (2, 1)
    assert new["data"] == {
        "broker": "127.0.0.1", "port": 1883, "username": "ha", "password": "pw", "protocol": "5",
    }  # fmt: skip
    options = new["options"]
    assert isinstance(options, dict)
    assert (options["discovery"], options["discovery_prefix"]) == (True, "homeassistant")
    assert options["birth_message"]["payload"] == "online"
    assert options["will_message"]["topic"] == "homeassistant/status"


def test_debian_mirror_from_apt_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The forky root comes from the machine's own Debian mirror: deb822 sources first (not the
    security archive), then one-line lists, else deb.debian.org."""
    monkeypatch.delenv("LIFEOPS_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    assert debian_mirror(tmp_path) == "http://deb.debian.org/debian"
    (tmp_path / "sources.list").write_text(
        "# x\ndeb [arch=amd64] http://old.example/debian bookworm main\n"
    )
    assert debian_mirror(tmp_path) == "http://old.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"
    monkeypatch.setenv("LIFEOPS_DEBIAN_MIRROR", "http://set.example/debian")
    assert debian_mirror(tmp_path) == "http://set.example/debian"


@pytest.mark.parametrize(
    ("ha_version", "discovery"),
    [*((v, "component") for v in VERSIONS), (VERSIONS[-1], "device")],
)
async def test_real_home_assistant(
    own_broker: MosquittoProcess,
    tmp_path: Path,
    start_agent: Start,
    ha_version: str,
    discovery: str,
) -> None:
    """The whole scenario on one Home Assistant release, with per-entity discovery configs,
    and on the newest also with device-based discovery (LIFEOPS_HA_DISCOVERY=device): the
    same entity ids, states, events and automations either way."""
    ha = HomeAssistantProcess(
        tmp_path / "ha",
        mqtt_port=own_broker.port,
        mqtt_username="homeassistant",
        mqtt_password=own_broker.credentials["homeassistant"],
        automations=(DOCS / "automations.yaml").read_text(),
        version=ha_version,
    )
    try:
        await _run(ha, own_broker, tmp_path, start_agent, discovery)
    finally:
        ha.cleanup()


async def _run(
    ha: HomeAssistantProcess,
    own_broker: MosquittoProcess,
    tmp_path: Path,
    start_agent: Start,
    discovery: str,
) -> None:
    async def states() -> dict[str, dict[str, Any]]:
        return await asyncio.to_thread(ha.states)

    db = {n: f"sqlite:///{tmp_path / n}.db" for n in ("stats", "lifeops", "ha_bridge")}
    async with (
        start_agent("stats", own_broker, db["stats"]),
        start_agent("lifeops", own_broker, db["lifeops"]),
        MeshClient(own_broker.url("tester"), default_contract()) as tester,
    ):
        # alice exists before HA starts: her device is discovered from retained configs
        reply = await tester.request(
            "timeline_complete", TimelineCompleteRequest(user_id=UID, item_code="morning_stretch")
        )
        assert reply.success, reply
        env = {"LIFEOPS_HA_DISCOVERY": discovery}
        bridge = Restartable(lambda: start_agent("ha_bridge", own_broker, db["ha_bridge"], env=env))
        await bridge.start()
        try:
            await _start_until_birth(ha, own_broker)
            try:
                assert await asyncio.to_thread(ha.version) == ha.installation.release.version
                await _scenario(ha, states, tester, own_broker, bridge)
                await _configs_are_of_one_form(own_broker, discovery)
            finally:
                await asyncio.to_thread(ha.stop)
        finally:
            await bridge.stop()


async def _configs_are_of_one_form(broker: MosquittoProcess, discovery: str) -> None:
    """What the broker retains for the user's device: one device-based config, or one config
    per entity, never both (a switch clears the other form)."""
    cli = MosquittoCli(broker, "tester")
    out = await cli.run(
        [
            *cli.args("mosquitto_sub"),
            "-t",
            "homeassistant/#",
            "--retained-only",
            "-W",
            "3",
            "-F",
            "%t",
        ],
        timeout=20,
    )
    topics = {t for t in out.stdout.decode().splitlines() if t.endswith("/config")}
    mine = {t for t in topics if f"/lifeops_{UID}" in t}
    device = {t for t in mine if t.startswith("homeassistant/device/")}
    if discovery == "device":
        assert device == {f"homeassistant/device/lifeops_{UID}/config"} and mine == device, mine
    else:
        assert not device and len(mine) == len(expected_entities()) - 3, mine  # 3 agents' sensors


async def _start_until_birth(ha: HomeAssistantProcess, broker: MosquittoProcess) -> None:
    """Start HA and wait for its birth message: HA sends it once started, after the
    subscriptions of its automations' MQTT triggers (which the REST API's automation state
    does not wait for; a level-up before them is missed)."""
    births: list[bytes] = []

    async def on_message(msg: Inbound) -> int:
        if msg.payload == b"online":
            births.append(msg.payload)
        return 0

    watcher = transport_for(broker, "tester", prefix="ha-birth")
    watcher.on_message = on_message
    await watcher.subscribe([default_contract().topic("ha_status")])
    await watcher.connect()
    try:
        await asyncio.to_thread(ha.start)
        await eventually(
            lambda: _true(bool(births)), timeout=60, what="Home Assistant's birth message"
        )
    finally:
        await watcher.disconnect()


async def _true(value: bool) -> bool:
    return value


class Restartable:
    """An agent started and stopped more than once (a new context each time)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make
        self.ctx: Any = None

    async def start(self) -> None:
        self.ctx = self.make()
        await self.ctx.__aenter__()

    async def stop(self) -> None:
        if self.ctx is not None:
            ctx, self.ctx = self.ctx, None
            await ctx.__aexit__(None, None, None)


async def _scenario(
    ha: HomeAssistantProcess,
    states: Callable[[], Any],
    tester: MeshClient,
    broker: MosquittoProcess,
    bridge: Restartable,
) -> None:
    expected = expected_entities()
    try:
        await eventually(
            lambda: _check(states, all_available),
            timeout=60,
            what="every LifeOps entity available in Home Assistant",
        )
    except AssertionError as exc:
        current = await states()
        wrong = {e: current.get(e, {}).get("state", "missing") for e in expected}
        wrong = {e: v for e, v in wrong.items() if v in ("missing", "unavailable")}
        mqtt_lines = [
            line for line in ha.log_text().splitlines() if "WARNING" in line or "ERROR" in line
        ]
        raise AssertionError(f"{exc}: {wrong}; HA log: {mqtt_lines[-15:]}") from None
    sheet = await sheet_of(tester)
    await eventually(
        lambda: _check(states, lambda s: matches_sheet(s, sheet, {"morning_stretch": 1})),
        timeout=20,
        what="sensor states equal to the character sheet",
    )
    current = await states()
    assert current[f"sensor.lifeops_{UID}_total_xp"]["attributes"]["unit_of_measurement"] == "XP"
    assert current[f"sensor.lifeops_{UID}_total_xp"]["attributes"]["state_class"] == (
        "total_increasing"
    )
    achievements = current[f"sensor.lifeops_{UID}_achievements"]["attributes"]
    assert achievements["latest_achievement"] == sheet.latest_achievement
    assert current["binary_sensor.lifeops_mesh_stats"]["state"] == "on"
    assert current["binary_sensor.lifeops_mesh_stats"]["attributes"]["device_class"] == (
        "connectivity"
    )
    dashboard = set(
        re.findall(r"\b(?:sensor|button|binary_sensor)\.lifeops_[a-z0-9_]+", _dashboard())
    )
    assert dashboard and dashboard <= set(current), sorted(dashboard - set(current))
    automation = "automation.lifeops_level_up"
    event_automation = "automation.lifeops_level_up_event"
    for a in (automation, event_automation):
        assert current[a]["state"] == "on", (a, current[a])
        assert current[a]["attributes"].get("last_triggered") is None, a
    assert current[LEVEL_UP]["attributes"]["event_types"] == ["level_up"]
    assert current[LEVEL_UP]["state"] == "unknown"  # no level-up since HA discovered it

    # A button pressed in HA: LifeOps completes, Stats grants 70 XP (level-ups of the character
    # and of stats), the sensors follow, the level-up event entity shows it and both documented
    # automations fire (on stats/levelup, and on the event entity).
    await asyncio.to_thread(
        ha.call_service,
        "button",
        "press",
        {"entity_id": f"button.lifeops_{UID}_gym_session_complete"},
    )
    await eventually(
        lambda: _check(
            states,
            lambda s: s[f"sensor.lifeops_{UID}_total_xp"]["state"] == str(sheet.total_xp + 70),
        ),
        timeout=20,
        what="the button press's 70 XP in the total XP sensor",
    )
    sheet = await sheet_of(tester)
    assert sheet.level >= 2
    streaks = {"morning_stretch": 1, "gym_session": 1}
    await eventually(
        lambda: _check(states, lambda s: matches_sheet(s, sheet, streaks)),
        timeout=20,
        what="every sensor updated after the button press",
    )
    for a in (automation, event_automation):
        await eventually(
            functools.partial(_check, states, _triggered(a)),
            timeout=20,
            what=f"{a} triggered",
        )
    current = await states()
    event = current[LEVEL_UP]
    assert event["state"] not in ("unknown", "unavailable"), event  # the time of the event
    attributes = event["attributes"]
    assert attributes["event_type"] == "level_up", attributes
    assert (attributes["previous_level"], attributes["stat"]) == (1, None), attributes
    assert attributes["new_level"] == sheet.level, attributes
    stat_up = current[STAT_LEVEL_UP]
    assert stat_up["state"] not in ("unknown", "unavailable"), stat_up
    stat = stat_up["attributes"]["stat"]
    assert stat_up["attributes"]["event_type"] == "stat_level_up", stat_up
    assert stat_up["attributes"]["new_level"] == sheet.stats[stat].level, stat_up
    assert attributes["event_id"].startswith(f"lvl:{UID}:"), attributes
    fired = current[event_automation]["attributes"]["last_triggered"]

    # XP logged through the mesh (not HA) up to level 5: the achievement event entity shows
    # Stats' level_5 achievement, and the event automation fires for the new level.
    assert current[ACHIEVEMENT]["state"] == "unknown"  # first_activity came before HA
    logged = await tester.request(
        "activities_log",
        ActivityLogRequest(user_id=UID, activity_type="bulk_test", custom_xp={"STR": 250}),
    )
    assert logged.success and "level_5" in logged.achievements, logged
    await eventually(
        lambda: _check(
            states,
            lambda s: (
                s[ACHIEVEMENT]["attributes"].get("achievement_code") == "level_5"
                and s[event_automation]["attributes"]["last_triggered"] != fired
            ),
        ),
        timeout=20,
        what="the level_5 achievement in its event entity, the event automation fired again",
    )
    current = await states()
    won = current[ACHIEVEMENT]
    assert won["state"] not in ("unknown", "unavailable"), won
    assert won["attributes"]["event_type"] == "achievement_unlocked", won
    assert won["attributes"]["title"] == "Level 5", won
    assert won["attributes"]["event_types"] == ["achievement_unlocked"], won
    sheet = await sheet_of(tester)
    assert sheet.level >= 5 and "level_5" in sheet.achievements
    fired = current[event_automation]["attributes"]["last_triggered"]

    # HA restart: its registries say what it created; after the restart everything is back.
    await asyncio.to_thread(ha.stop)
    entities = ha.storage("core.entity_registry")["data"]["entities"]  # type: ignore[index]
    devices = ha.storage("core.device_registry")["data"]["devices"]  # type: ignore[index]
    ours = {e["entity_id"]: e for e in entities if e["platform"] == "mqtt"}
    assert {k: v["unique_id"] for k, v in ours.items()} == expected
    user_devices = {ours[e]["device_id"] for e in expected if f"_{UID}_" in e}
    assert len(user_devices) == 1, "all of alice's entities belong to one device"
    device = next(d for d in devices if d["id"] in user_devices)
    assert device["name"] == f"LifeOps {UID}"
    assert device["identifiers"] == [["mqtt", f"lifeops_mesh:user:{UID}"]]
    assert device["manufacturer"] == "LifeOps Mesh"
    await asyncio.to_thread(ha.start)
    await _back(states, tester, streaks, "after a Home Assistant restart")

    # Bridge restart: entities go unavailable with it, then come back with their values.
    await bridge.stop()
    await eventually(
        lambda: _check(
            states, lambda s: s[f"sensor.lifeops_{UID}_level"]["state"] == "unavailable"
        ),
        timeout=20,
        what="entities unavailable while the bridge is down",
    )
    await bridge.start()
    await _back(states, tester, streaks, "after a bridge restart")

    # Broker restart (persistence on): every client reconnects and HA shows everything again.
    await asyncio.to_thread(broker.stop)
    await asyncio.sleep(1)
    await asyncio.to_thread(broker.start)
    await _back(states, tester, streaks, "after a broker restart")
    current = await states()
    assert current[event_automation]["attributes"]["last_triggered"] == fired, (
        "restarts fired the event automation again"
    )

    log = ha.log_text()
    rejected = (
        "when processing MQTT discovery message",  # a payload HA's schema refused
        "illegal discovery topic",
        "Invalid MQTT device discovery payload",
        "Unable to parse JSON discovery payload",
        "Unable to parse origin information",
        "`event_type` missing in JSON event payload",
        "Invalid event type",
        "No valid JSON event payload",
    )
    for bad in rejected:
        assert bad not in log, [line for line in log.splitlines() if bad in line][:5]
    errors = [
        line
        for line in log.splitlines()
        # HA's MQTT integration and templates; paho's socket errors while the broker restarts
        # are expected
        if ("ERROR" in line and "[homeassistant.components.mqtt" in line)
        or "Template variable" in line
    ]
    assert not errors, errors[:5]


async def _back(
    states: Callable[[], Any], tester: MeshClient, streaks: dict[str, int], when: str
) -> None:
    sheet = await asyncio.wait_for(sheet_of(tester), 30)
    await eventually(
        lambda: _check(states, lambda s: all_available(s) and matches_sheet(s, sheet, streaks)),
        timeout=60,
        what=f"every entity available with its current value {when}",
    )


async def _check(states: Callable[[], Any], predicate: Callable[[dict[str, Any]], Any]) -> bool:
    try:
        current = await states()
    except OSError:
        return False  # HA restarting
    try:
        return bool(predicate(current))
    except KeyError:
        return False


def _triggered(automation: str) -> Callable[[dict[str, Any]], Any]:
    return lambda s: s[automation]["attributes"].get("last_triggered")


def _dashboard() -> str:
    return (DOCS / "dashboard.yaml").read_text()
