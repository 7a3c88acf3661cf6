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

import msgspec

from mesh import codec
from mesh.contract import Contract
from mesh.schemas import (
    CharacterSheet,
    HaAvailability,
    HaDevice,
    HaDiscoveryConfig,
    HaOrigin,
    HaStat,
    HaUserState,
    TimelineDay,
)

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

    def _config_topic(self, component: str, node_id: str, what: str) -> str:
        return self.contract.topic(
            "ha_discovery", component=component, node_id=node_id, object_id=what
        )

    def state_topic(self, user_id: str) -> str:
        return self.contract.topic("ha_user_state", user_id=user_id)

    def _availability(self, *agents: str) -> list[HaAvailability]:
        return [HaAvailability(topic=self.contract.topic("status", agent=a)) for a in agents]

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
                    topic=self._config_topic("binary_sensor", MESH_NODE, agent),
                    config=HaDiscoveryConfig(
                        name=f"{agent} agent",
                        unique_id=f"lifeops_mesh:agent:{agent}",
                        object_id=object_id,
                        default_entity_id=f"binary_sensor.{object_id}",
                        device=device,
                        origin=ORIGIN,
                        state_topic=self.contract.topic("status", agent=agent),
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
        self, user_id: str, sheet: CharacterSheet | None, timeline: TimelineDay | None
    ) -> list[Entity]:
        node = USER_NODE_PREFIX + user_id
        slug = user_slug(user_id)
        device = HaDevice(
            identifiers=[f"lifeops_mesh:user:{user_id}"],
            name=f"LifeOps {user_id}",
            manufacturer=MANUFACTURER,
            model="Character",
            sw_version=VERSION,
        )
        state_topic = self.state_topic(user_id)
        out: list[Entity] = []

        def add(
            component: str, what: str, availability: list[HaAvailability], **kw: object
        ) -> None:
            object_id = f"lifeops_{slug}_{what}"
            out.append(
                Entity(
                    topic=self._config_topic(component, node, what),
                    config=HaDiscoveryConfig(
                        unique_id=f"lifeops_mesh:user:{user_id}:{what}",
                        object_id=object_id,
                        default_entity_id=f"{component}.{object_id}",
                        device=device,
                        origin=ORIGIN,
                        availability=availability,
                        availability_mode="all",
                        **kw,  # type: ignore[arg-type]
                    ),
                )
            )

        def sensor(what: str, field: str, availability: list[HaAvailability], **kw: object) -> None:
            add(
                "sensor",
                what,
                availability,
                state_topic=state_topic,
                value_template=f"{{{{ value_json.{field} }}}}",
                **kw,
            )

        if sheet is not None:
            stats = self._availability("ha_bridge", "stats")
            sensor(
                "level",
                "level",
                stats,
                name="Level",
                state_class="measurement",
                icon="mdi:shield-star",
            )
            sensor(
                "total_xp",
                "total_xp",
                stats,
                name="Total XP",
                unit_of_measurement="XP",
                state_class="total_increasing",
                icon="mdi:star-four-points",
            )
            sensor(
                "xp_to_next_level",
                "xp_to_next_level",
                stats,
                name="XP to next level",
                unit_of_measurement="XP",
                state_class="measurement",
                icon="mdi:arrow-up-bold-circle",
            )
            sensor(
                "achievements",
                "achievements",
                stats,
                name="Achievements",
                state_class="measurement",
                icon="mdi:trophy",
                json_attributes_topic=state_topic,
                json_attributes_template=(
                    '{{ {"latest_achievement": value_json.latest_achievement,'
                    ' "achievements": value_json.achievement_list} | tojson }}'
                ),
            )
            for stat in sorted(sheet.stats):
                low = stat.lower()
                sensor(
                    f"{low}_level",
                    f"stats.{stat}.level",
                    stats,
                    name=f"{stat} level",
                    state_class="measurement",
                    icon="mdi:chart-line",
                )
                sensor(
                    f"{low}_xp",
                    f"stats.{stat}.xp",
                    stats,
                    name=f"{stat} XP",
                    unit_of_measurement="XP",
                    state_class="total_increasing",
                    icon="mdi:chart-line",
                )
        if timeline is not None:
            lifeops = self._availability("ha_bridge", "lifeops")
            complete = self.contract.topic("timeline_complete")
            for item in timeline.items:
                sensor(
                    f"{item.code}_streak",
                    f"streaks.{item.code} | default(0)",
                    lifeops,
                    name=f"{item.title} streak",
                    unit_of_measurement="d",
                    state_class="measurement",
                    icon="mdi:fire",
                )
                add(
                    "button",
                    f"{item.code}_complete",
                    lifeops,
                    name=f"Complete {item.title}",
                    command_topic=complete,
                    payload_press=json.dumps(
                        {"user_id": user_id, "item_code": item.code}, separators=(",", ":")
                    ),
                    qos=1,
                    icon="mdi:check-circle-outline",
                )
        return out

    def user_state(
        self, user_id: str, sheet: CharacterSheet | None, timeline: TimelineDay | None
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
        return state


def encode_config(entity: Entity) -> bytes:
    return codec.encode(entity.config)
