"""Every payload of the LifeOps Mesh contract, as msgspec Structs; topics.toml names them.

They live with the contract, not with an agent: Stats' CharacterSheet is read by LifeOps and the
HA bridge, LifeOps' ActivityCompleted is handled by Stats, and agents never import each other.
The runtime's own payloads (replies, errors, dead letters, health) are in `mesh.schemas`.

Wire messages do not reject unknown fields (a newer peer may add some); new fields always get
defaults and a field's type never changes.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec

from mesh import Payload, Reply, Transaction

ActivitySource = Literal["lifeops", "challengemode", "manual"]

# Bounds on what a client may send: a violation is a validation error that names the field.
# (User ids are checked further by lifeops_contract.ids; 128 lets that check say what is wrong:
# a UUID or 1-64 characters of [A-Za-z0-9_-]; ids equal after folding case and `-`/`_` are one
# person's, and the agents refuse a second spelling with `user_id_taken`.)
UserId = Annotated[str, msgspec.Meta(max_length=128)]
Code = Annotated[str, msgspec.Meta(max_length=64)]  # activity types, item codes, stat names
Ref = Annotated[str, msgspec.Meta(max_length=256)]  # ids and references chosen by clients
Title = Annotated[str, msgspec.Meta(max_length=200)]
Xp = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**31)]
Score = Annotated[int, msgspec.Meta(ge=0, le=100)]
StatGrants = Annotated[dict[Code, Xp], msgspec.Meta(max_length=32)]
Data = Annotated[dict[Code, Any], msgspec.Meta(max_length=64)]

DATA_MAX_DEPTH = 4
DATA_MAX_VALUES = 512
DATA_MAX_TEXT = 4096


def check_data(value: Any, field: str) -> None:
    """Free-form JSON (activity_data) stays small: at most DATA_MAX_DEPTH levels of nesting,
    DATA_MAX_VALUES values, strings of at most DATA_MAX_TEXT characters, 64-bit numbers."""
    count = 0
    stack: list[tuple[Any, int, str]] = [(value, 1, f"$.{field}")]
    while stack:
        v, depth, where = stack.pop()
        count += 1
        if count > DATA_MAX_VALUES:
            raise ValueError(f"`{field}` holds more than {DATA_MAX_VALUES} values - at `{where}`")
        if isinstance(v, dict | list):
            if depth > DATA_MAX_DEPTH:
                raise ValueError(f"`{field}` nests deeper than {DATA_MAX_DEPTH} - at `{where}`")
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for k, child in items:
                if isinstance(k, str) and len(k) > 64:
                    raise ValueError(f"`{field}` has a key longer than 64 - at `{where}`")
                stack.append(
                    (child, depth + 1, f"{where}.{k}" if isinstance(k, str) else f"{where}[{k}]")
                )
        elif isinstance(v, str) and len(v) > DATA_MAX_TEXT:
            raise ValueError(f"`{field}` has a string over {DATA_MAX_TEXT} - at `{where}`")
        elif isinstance(v, int) and not -(2**63) <= v < 2**63:
            raise ValueError(f"`{field}` has a number out of range - at `{where}`")


# --- stats: activities ---------------------------------------------------------------------


class ActivityLogRequest(Payload, kw_only=True):
    """The seed's "log activity and grant XP" body."""

    user_id: UserId
    activity_type: Code
    activity_data: Data = {}
    source: ActivitySource = "manual"
    source_ref: Ref | None = None
    activity_time: dt.datetime | None = None
    custom_xp: StatGrants | None = None
    activity_id: Ref | None = None
    streak: Count | None = None
    transaction: Transaction | None = None

    def __post_init__(self) -> None:
        check_data(self.activity_data, "activity_data")


class ActivityCompleted(ActivityLogRequest, kw_only=True):
    """LifeOps tells Stats that a timeline item was completed."""

    activity_id: Ref
    source: ActivitySource = "lifeops"
    item_code: Code | None = None


class ActivityLogReply(Reply, kw_only=True):
    activity_id: str | None = None
    xp_granted: dict[str, int] = {}
    stat_level_ups: dict[str, int] = {}
    character_level_up: bool = False
    new_level: int | None = None
    total_xp: int | None = None
    achievements: list[str] = []
    duplicate: bool = False
    message: str = ""


class OuraScores(Payload, kw_only=True):
    sleep: Score | None = None
    readiness: Score | None = None
    activity: Score | None = None


class OuraSynced(Payload, kw_only=True):
    """One day's scores. `revision` counts how often LifeOps saw the day change (0: its first
    version); Stats grants, per stat, only what a revision adds to what the day already got."""

    user_id: UserId
    date: dt.date
    scores: OuraScores
    revision: Count = 0


# --- stats: characters and events ----------------------------------------------------------


class StatSheet(Payload, kw_only=True):
    xp: int = 0
    level: int = 1
    xp_into_level: int = 0
    xp_to_next_level: int = 0


class CharacterSheet(Payload, kw_only=True):
    user_id: UserId = ""
    level: int = 1
    total_xp: int = 0
    xp_into_level: int = 0
    xp_to_next_level: int = 0
    stats: Annotated[dict[Code, StatSheet], msgspec.Meta(max_length=32)] = {}
    achievements: Annotated[list[Code], msgspec.Meta(max_length=1000)] = []
    latest_achievement: Code | None = None
    activities: int = 0
    updated_at: dt.datetime | None = None


class CharacterGetRequest(Payload, kw_only=True):
    user_id: UserId
    transaction: Transaction | None = None


class CharacterReply(Reply, kw_only=True):
    character: CharacterSheet | None = None
    total_xp: int | None = None
    level: int | None = None


class LevelUp(Payload, kw_only=True):
    event_id: str
    user_id: str
    new_level: int
    previous_level: int
    total_xp: int
    activity_id: str
    stat: str | None = None  # None: the character level
    occurred_at: dt.datetime


class AchievementUnlocked(Payload, kw_only=True):
    event_id: str
    user_id: str
    achievement_code: str
    title: str
    activity_id: str
    awarded_at: dt.datetime


class EventsRecentRequest(Payload, kw_only=True):
    user_id: UserId
    since: dt.datetime | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=500)] = 100
    transaction: Transaction | None = None


class EventsRecentReply(Reply, kw_only=True):
    """A user's level-ups and achievements since a time, oldest first (to catch up on events
    a subscriber missed)."""

    levelups: list[LevelUp] = []
    achievements: list[AchievementUnlocked] = []


# --- lifeops: timeline, streaks, Oura ------------------------------------------------------


class TimelineCompleteRequest(Payload, kw_only=True):
    user_id: UserId
    item_code: Code
    completed_at: dt.datetime | None = None
    transaction: Transaction | None = None


class TimelineCompleteReply(Reply, kw_only=True):
    item_code: str | None = None
    date: dt.date | None = None
    activity_id: str | None = None
    new_streak: int = 0
    best_streak: int = 0
    xp_granted: dict[str, int] = {}
    stat_level_ups: dict[str, int] = {}
    character_level_up: bool = False
    xp_pending: bool = False
    message: str = ""


class TimelineItemState(Payload, kw_only=True):
    code: Code
    title: Title
    activity_type: Code
    xp: StatGrants
    window: Code | None = None
    done: bool = False
    completed_at: dt.datetime | None = None
    current_streak: int = 0
    best_streak: int = 0
    xp_pending: bool = False


class TimelineDay(Payload, kw_only=True):
    user_id: UserId
    date: dt.date
    timezone: Code
    items: Annotated[list[TimelineItemState], msgspec.Meta(max_length=500)] = []
    done: int = 0
    total: int = 0


class TimelineGetRequest(Payload, kw_only=True):
    user_id: UserId
    date: dt.date | None = None
    transaction: Transaction | None = None


class TimelineReply(Reply, kw_only=True):
    timeline: TimelineDay | None = None


class UserSettingsRequest(Payload, kw_only=True):
    user_id: UserId
    timezone: Code
    transaction: Transaction | None = None


class UserSettingsReply(Reply, kw_only=True):
    user_id: str | None = None
    timezone: str | None = None


class OuraDay(Payload, kw_only=True):
    date: dt.date
    scores: OuraScores


class OuraImportRequest(Payload, kw_only=True):
    user_id: UserId
    days: Annotated[list[OuraDay], msgspec.Meta(max_length=400)]
    transaction: Transaction | None = None


class OuraImportReply(Reply, kw_only=True):
    imported: int = 0
    skipped: int = 0
    revised: int = 0  # days known before whose scores changed (sent to Stats as a revision)


# --- Home Assistant ------------------------------------------------------------------------


class HaStat(Payload, kw_only=True):
    level: int
    xp: int


class HaUserState(Payload, kw_only=True):
    """One user's HA device state: every entity reads one field with a value_template."""

    user_id: str
    level: int | None = None
    total_xp: int | None = None
    xp_into_level: int | None = None
    xp_to_next_level: int | None = None  # XP still needed for the next level
    stats: dict[str, HaStat] = {}
    achievements: int = 0
    latest_achievement: str | None = None
    achievement_list: list[str] = []
    streaks: dict[str, int] = {}
    timeline_date: dt.date | None = None
    updated_at: dt.datetime | None = None


class HaLevelUpEvent(Payload, kw_only=True):
    """A level-up as one user's Home Assistant event entity reads it (`event_type` first)."""

    event_type: Literal["level_up", "stat_level_up"]  # character, or one stat
    event_id: str
    new_level: int
    previous_level: int
    stat: str | None = None
    total_xp: int
    occurred_at: dt.datetime


class HaAchievementEvent(Payload, kw_only=True):
    """An achievement as one user's Home Assistant event entity reads it."""

    event_type: Literal["achievement_unlocked"]
    event_id: str
    achievement_code: str
    title: str
    awarded_at: dt.datetime


class HaAvailability(msgspec.Struct, kw_only=True, omit_defaults=True):
    topic: str
    payload_available: str = "online"
    payload_not_available: str = "offline"


class HaDevice(msgspec.Struct, kw_only=True, omit_defaults=True):
    identifiers: list[str]
    name: str
    manufacturer: str
    model: str | None = None
    sw_version: str | None = None


class HaOrigin(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    sw_version: str | None = None
    support_url: str | None = None


class HaDiscoveryConfig(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An HA MQTT discovery payload (sensor, binary_sensor, button or event); unset keys are
    left out. Alone on its topic it carries `device` and `origin`; as one component of a
    device-based discovery payload it carries `p` (its platform) instead."""

    name: str | None = None
    unique_id: str
    object_id: str
    default_entity_id: str
    device: HaDevice | None = None
    origin: HaOrigin | None = None
    availability: list[HaAvailability] | None = None
    availability_mode: Literal["all", "any", "latest"] | None = None
    state_topic: str | None = None
    value_template: str | None = None
    json_attributes_topic: str | None = None
    json_attributes_template: str | None = None
    unit_of_measurement: str | None = None
    state_class: Literal["measurement", "total", "total_increasing"] | None = None
    device_class: str | None = None
    entity_category: Literal["config", "diagnostic"] | None = None
    icon: str | None = None
    command_topic: str | None = None
    payload_press: str | None = None
    payload_on: str | None = None
    payload_off: str | None = None
    event_types: list[str] | None = None
    qos: int | None = None
    platform: str | None = msgspec.field(default=None, name="p")


class HaDeviceDiscovery(msgspec.Struct, kw_only=True):
    """Device-based discovery (HA 2024.11 and later): one payload per device, its entities
    as components (`cmps`, each with its platform `p` and `unique_id`)."""

    device: HaDevice = msgspec.field(name="dev")
    origin: HaOrigin = msgspec.field(name="o")
    components: dict[str, HaDiscoveryConfig] = msgspec.field(name="cmps")


SCHEMAS: dict[str, Any] = {
    "ActivityLogRequest": ActivityLogRequest,
    "ActivityCompleted": ActivityCompleted,
    "ActivityLogReply": ActivityLogReply,
    "OuraSynced": OuraSynced,
    "CharacterSheet": CharacterSheet,
    "CharacterGetRequest": CharacterGetRequest,
    "CharacterReply": CharacterReply,
    "LevelUp": LevelUp,
    "AchievementUnlocked": AchievementUnlocked,
    "EventsRecentRequest": EventsRecentRequest,
    "EventsRecentReply": EventsRecentReply,
    "TimelineCompleteRequest": TimelineCompleteRequest,
    "TimelineCompleteReply": TimelineCompleteReply,
    "TimelineDay": TimelineDay,
    "TimelineGetRequest": TimelineGetRequest,
    "TimelineReply": TimelineReply,
    "UserSettingsRequest": UserSettingsRequest,
    "UserSettingsReply": UserSettingsReply,
    "OuraImportRequest": OuraImportRequest,
    "OuraImportReply": OuraImportReply,
    "HaUserState": HaUserState,
    "HaDiscoveryConfig": HaDiscoveryConfig,
    "HaDeviceDiscovery": HaDeviceDiscovery,
    "HaLevelUpEvent": HaLevelUpEvent,
    "HaAchievementEvent": HaAchievementEvent,
}
"""Schema name (as written in topics.toml) -> type."""
