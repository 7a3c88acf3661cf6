"""What Home Assistant should show: discovery configs and device states, computed from the
mesh's retained states. Pure functions; nothing here touches the broker or the database.

Naming never changes once shipped (HA keys its entity registry on it):
- unique_id  `lifeops_mesh:user:<user_id>:<what>` and `lifeops_mesh:agent:<agent>`, from ids only;
- topic      `<prefix>/<component>/lifeops_<user_id>/<what>/config` (one node per user) and
             `<prefix>/binary_sensor/lifeops-mesh/<agent>/config`;
- entity id  `<component>.lifeops_<user slug>_<what>` through both `object_id` (HA before 2025.10)
             and `default_entity_id` (HA 2025.10 on).
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from typing import Any

import msgspec

from lifeops_contract.schemas import (
    AchievementUnlocked,
    CharacterSheet,
    HaAchievementEvent,
    HaAvailability,
    HaDevice,
    HaDeviceDiscovery,
    HaDiscoveryConfig,
    HaLevelUpEvent,
    HaOrigin,
    HaStat,
    HaUserState,
    LevelUp,
    OuraSyncStatus,
    TimelineDay,
)
from mesh import Contract, codec

MESH_NODE = "lifeops-mesh"
USER_NODE_PREFIX = "lifeops_"
SUPPORT_URL = "https://github.com/lifeops-mesh/lifeops-mesh"


def _version() -> str:
    try:
        return importlib.metadata.version("lifeops-mesh")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


VERSION = _version()
MANUFACTURER = "LifeOps Mesh"
ORIGIN = HaOrigin(name="LifeOps Mesh", sw_version=VERSION, support_url=SUPPORT_URL)


class Entity(msgspec.Struct, frozen=True, kw_only=True):
    topic: str
    config: HaDiscoveryConfig


class DeviceConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One device's entities as one device-based discovery payload."""

    topic: str
    config: HaDeviceDiscovery


def node_of(topic: str) -> tuple[str, str]:
    """(component, object id) of a per-component config topic
    `<prefix>/<component>/<node_id>/<object_id>/config`."""
    parts = topic.split("/")
    return parts[-4], parts[-2]


def is_own_node(node_id: str) -> bool:
    """Discovery node ids this bridge owns (other bridges share the prefix)."""
    return node_id == MESH_NODE or node_id.startswith(USER_NODE_PREFIX)


def user_slug(user_id: str) -> str:
    """The entity-id part of a user: lower case, [a-z0-9_] (HA's own slug rules)."""
    return re.sub(r"[^a-z0-9_]", "_", user_id.lower())


class EntityBuilder:
    def __init__(self, contract: Contract, agents: list[str]) -> None:
        self.contract = contract
        self.agents = agents

    # -- topics ---------------------------------------------------------------------------------

    def config_topic(self, component: str, node_id: str, what: str) -> str:
        return self.contract.topic(
            "ha_discovery", component=component, node_id=node_id, object_id=what
        )

    def state_topic(self, user_id: str) -> str:
        return self.contract.topic("ha_user_state", user_id=user_id)

    def availability_topic(self, agent: str) -> str:
        """The bridge's own status, or an agent's availability as the bridge derives it from
        its instances (available while any instance is)."""
        if agent == "ha_bridge":
            return self.contract.topic("status", agent=agent)
        return self.contract.topic("ha_availability", peer=agent)

    def device_config(self, entities: list[Entity]) -> DeviceConfig:
        """The same entities (of one device) as one device-based discovery payload: each
        component keeps its keys, ids and availability; device and origin are said once."""
        first = entities[0]
        assert first.config.device is not None and first.config.origin is not None
        components = {}
        node = ""
        for e in entities:
            component, what = node_of(e.topic)
            node = e.topic.split("/")[-3]
            components[what] = msgspec.structs.replace(
                e.config, device=None, origin=None, platform=component
            )
        return DeviceConfig(
            topic=self.contract.topic("ha_device_discovery", node_id=node),
            config=HaDeviceDiscovery(
                device=first.config.device, origin=first.config.origin, components=components
            ),
        )

    def availability(self, *agents: str) -> list[HaAvailability]:
        return [HaAvailability(topic=self.availability_topic(a)) for a in agents]

    # -- the agents' device ---------------------------------------------------------------------

    def mesh_entities(self) -> list[Entity]:
        device = HaDevice(
            identifiers=["lifeops_mesh:mesh"],
            manufacturer=MANUFACTURER,
            name="LifeOps Mesh",
            model="Agents",
            sw_version=VERSION,
        )
        out = []
        for agent in self.agents:
            object_id = f"lifeops_mesh_{user_slug(agent)}"
            out.append(
                Entity(
                    topic=self.config_topic("binary_sensor", MESH_NODE, agent),
                    config=HaDiscoveryConfig(
                        name=f"{agent} agent",
                        unique_id=f"lifeops_mesh:agent:{agent}",
                        object_id=object_id,
                        default_entity_id=f"binary_sensor.{object_id}",
                        device=device,
                        origin=ORIGIN,
                        state_topic=self.availability_topic(agent),
                        payload_on="online",
                        payload_off="offline",
                        device_class="connectivity",
                        entity_category="diagnostic",
                        qos=1,
                    ),
                )
            )
        return out

    # -- one user's device ----------------------------------------------------------------------

    def user_entities(
        self,
        user_id: str,
        sheet: CharacterSheet | None,
        timeline: TimelineDay | None,
        oura: OuraSyncStatus | None = None,
    ) -> list[Entity]:
        """Every entity of one user's device: the character's sensors and its level-up and
        achievement events once Stats knows them, a streak sensor and a completion button per
        timeline item once LifeOps does, and an "Oura sync" sensor once LifeOps syncs the
        user's Oura data."""
        device = _UserDevice(self, user_id)
        out: list[Entity] = []
        if sheet is not None:
            out += device.character_sensors()
            out += device.stat_sensors(sorted(sheet.stats))
            out += device.event_entities()
        if timeline is not None:
            out += device.timeline_entities(timeline)
        if oura is not None:
            out.append(device.oura_sensor())
        return out

    def user_state(
        self,
        user_id: str,
        sheet: CharacterSheet | None,
        timeline: TimelineDay | None,
        oura: OuraSyncStatus | None = None,
    ) -> HaUserState:
        state = HaUserState(user_id=user_id)
        if sheet is not None:
            state.level = sheet.level
            state.total_xp = sheet.total_xp
            state.xp_into_level = sheet.xp_into_level
            state.xp_to_next_level = max(0, sheet.xp_to_next_level - sheet.xp_into_level)
            state.stats = {
                s: HaStat(level=v.level, xp=v.xp) for s, v in sorted(sheet.stats.items())
            }
            state.achievements = len(sheet.achievements)
            state.latest_achievement = sheet.latest_achievement
            state.achievement_list = list(sheet.achievements)
            state.updated_at = sheet.updated_at
        if timeline is not None:
            state.streaks = {i.code: i.current_streak for i in timeline.items}
            state.timeline_date = timeline.date
        if oura is not None:
            state.oura_sync = oura.state
            state.oura_sync_reason = oura.reason
        return state


# (what, name, contract key of its topic, event type, icon) of each user's event entities
EVENT_ENTITIES = (
    ("level_up", "Level up", "ha_levelup", "level_up", "mdi:arrow-up-bold-hexagon-outline"),
    ("stat_level_up", "Stat level up", "ha_stat_levelup", "stat_level_up", "mdi:chart-line"),
    ("achievement", "Achievement unlocked", "ha_achievement", "achievement_unlocked",
     "mdi:trophy-award"),
)  # fmt: skip


class _UserDevice:
    """The entities of one user's device (`LifeOps <user>`)."""

    def __init__(self, builder: EntityBuilder, user_id: str) -> None:
        self.builder = builder
        self.user_id = user_id
        self.node = USER_NODE_PREFIX + user_id
        self.slug = user_slug(user_id)
        self.state_topic = builder.state_topic(user_id)
        self.device = HaDevice(
            identifiers=[f"lifeops_mesh:user:{user_id}"],
            name=f"LifeOps {user_id}",
            manufacturer=MANUFACTURER,
            model="Character",
            sw_version=VERSION,
        )

    def entity(
        self, component: str, what: str, availability: list[HaAvailability], config: Any
    ) -> Entity:
        """One entity: ids derived from the user id and `what` only; `config` holds the rest."""
        object_id = f"lifeops_{self.slug}_{what}"
        return Entity(
            topic=self.builder.config_topic(component, self.node, what),
            config=msgspec.structs.replace(
                config,
                unique_id=f"lifeops_mesh:user:{self.user_id}:{what}",
                object_id=object_id,
                default_entity_id=f"{component}.{object_id}",
                device=self.device,
                origin=ORIGIN,
                availability=availability,
                availability_mode="all",
            ),
        )

    def sensor(
        self, what: str, field: str, availability: list[HaAvailability], **kw: Any
    ) -> Entity:
        """A sensor reading `field` of the user's device state."""
        config = _config(
            state_topic=self.state_topic, value_template=f"{{{{ value_json.{field} }}}}", **kw
        )
        return self.entity("sensor", what, availability, config)

    def character_sensors(self) -> list[Entity]:
        stats = self.builder.availability("ha_bridge", "stats")
        attributes = (
            '{{ {"latest_achievement": value_json.latest_achievement,'
            ' "achievements": value_json.achievement_list} | tojson }}'
        )
        return [
            self.sensor(
                "level", "level", stats,
                name="Level", state_class="measurement", icon="mdi:shield-star",
            ),
            self.sensor(
                "total_xp", "total_xp", stats,
                name="Total XP", unit_of_measurement="XP", state_class="total_increasing",
                icon="mdi:star-four-points",
            ),
            self.sensor(
                "xp_to_next_level", "xp_to_next_level", stats,
                name="XP to next level", unit_of_measurement="XP", state_class="measurement",
                icon="mdi:arrow-up-bold-circle",
            ),
            self.sensor(
                "achievements", "achievements", stats,
                name="Achievements", state_class="measurement", icon="mdi:trophy",
                json_attributes_topic=self.state_topic, json_attributes_template=attributes,
            ),
        ]  # fmt: skip

    def stat_sensors(self, stats: list[str]) -> list[Entity]:
        availability = self.builder.availability("ha_bridge", "stats")
        out = []
        for stat in stats:
            low = stat.lower()
            out.append(
                self.sensor(
                    f"{low}_level", f"stats.{stat}.level", availability,
                    name=f"{stat} level", state_class="measurement", icon="mdi:chart-line",
                )
            )  # fmt: skip
            out.append(
                self.sensor(
                    f"{low}_xp", f"stats.{stat}.xp", availability,
                    name=f"{stat} XP", unit_of_measurement="XP",
                    state_class="total_increasing", icon="mdi:chart-line",
                )
            )  # fmt: skip
        return out

    def event_entities(self) -> list[Entity]:
        """HA event entities: automations trigger on their state (HA's event trigger) instead
        of raw MQTT; the bridge republishes Stats' events per user with an `event_type`. The
        character's level-ups have an entity of their own: HA keeps only the last of events
        that reach one entity in the same millisecond, and a grant raises stats with it."""
        stats = self.builder.availability("ha_bridge", "stats")
        return [
            self.entity(
                "event",
                what,
                stats,
                _config(
                    name=name,
                    state_topic=self.builder.contract.topic(key, user_id=self.user_id),
                    event_types=[event_type],
                    icon=icon,
                    qos=1,
                ),
            )
            for what, name, key, event_type, icon in EVENT_ENTITIES
        ]

    def oura_sensor(self) -> Entity:
        """`ok`, or why the user's Oura sync fails (login_needed, membership, ...); the
        explanation with what to do is its `reason` attribute."""
        return self.sensor(
            "oura_sync", "oura_sync", self.builder.availability("ha_bridge", "lifeops"),
            name="Oura sync", icon="mdi:ring", json_attributes_topic=self.state_topic,
            json_attributes_template='{{ {"reason": value_json.oura_sync_reason} | tojson }}',
        )  # fmt: skip

    def timeline_entities(self, timeline: TimelineDay) -> list[Entity]:
        lifeops = self.builder.availability("ha_bridge", "lifeops")
        complete = self.builder.contract.topic("timeline_complete")
        out = []
        for item in timeline.items:
            out.append(
                self.sensor(
                    f"{item.code}_streak", f"streaks.{item.code} | default(0)", lifeops,
                    name=f"{item.title} streak", unit_of_measurement="d",
                    state_class="measurement", icon="mdi:fire",
                )
            )  # fmt: skip
            press = json.dumps({"user_id": self.user_id, "item_code": item.code})
            button = _config(
                name=f"Complete {item.title}",
                command_topic=complete,
                payload_press=press.replace(", ", ",").replace(": ", ":"),
                qos=1,
                icon="mdi:check-circle-outline",
            )
            out.append(self.entity("button", f"{item.code}_complete", lifeops, button))
        return out


def levelup_event(event: LevelUp) -> HaLevelUpEvent:
    """Stats' level-up as the user's level-up event entity reads it."""
    return HaLevelUpEvent(
        event_type="level_up" if event.stat is None else "stat_level_up",
        event_id=event.event_id,
        new_level=event.new_level,
        previous_level=event.previous_level,
        stat=event.stat,
        total_xp=event.total_xp,
        occurred_at=event.occurred_at,
    )


def achievement_event(event: AchievementUnlocked) -> HaAchievementEvent:
    """Stats' achievement as the user's achievement event entity reads it."""
    return HaAchievementEvent(
        event_type="achievement_unlocked",
        event_id=event.event_id,
        achievement_code=event.achievement_code,
        title=event.title,
        awarded_at=event.awarded_at,
    )


_PLACEHOLDER_DEVICE = HaDevice(identifiers=[], name="", manufacturer="")


def _config(**kw: Any) -> HaDiscoveryConfig:
    """A discovery config with the entity's own keys; ids, device, origin and availability
    are filled in by `_UserDevice.entity`."""
    return HaDiscoveryConfig(
        unique_id="", object_id="", default_entity_id="", device=_PLACEHOLDER_DEVICE,
        origin=ORIGIN, **kw,
    )  # fmt: skip


def encode_config(entity: Entity | DeviceConfig) -> bytes:
    return codec.encode(entity.config)
