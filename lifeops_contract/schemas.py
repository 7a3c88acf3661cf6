"""Every payload of the LifeOps Mesh contract, as msgspec Structs; topics.toml names them.

They live with the contract, not with an agent: Stats' CharacterSheet is read by LifeOps and the
HA bridge, LifeOps' ActivityCompleted is handled by Stats, and agents never import each other.
The runtime's own payloads (replies, errors, dead letters, health) are in `mesh.schemas`.

Wire messages do not reject unknown fields (a newer peer may add some); new fields always get
defaults and a field's type never changes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import msgspec

from mesh import Payload, Reply

ActivitySource = Literal["lifeops", "challengemode", "manual"]


# --- stats: activities ---------------------------------------------------------------------


class ActivityLogRequest(Payload, kw_only=True):
    """The seed's "log activity and grant XP" body."""

    user_id: str
    activity_type: str
    activity_data: dict[str, Any] = {}
    source: ActivitySource = "manual"
    source_ref: str | None = None
    activity_time: dt.datetime | None = None
    custom_xp: dict[str, int] | None = None
    activity_id: str | None = None
    streak: int | None = None
    transaction: str | int | None = None


class ActivityCompleted(ActivityLogRequest, kw_only=True):
    """LifeOps tells Stats that a timeline item was completed."""

    activity_id: str
    source: ActivitySource = "lifeops"
    item_code: str | None = None


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
    sleep: int | None = None
    readiness: int | None = None
    activity: int | None = None


class OuraSynced(Payload, kw_only=True):
    user_id: str
    date: dt.date
    scores: OuraScores


# --- stats: characters and events ----------------------------------------------------------


class StatSheet(Payload, kw_only=True):
    xp: int = 0
    level: int = 1
    xp_into_level: int = 0
    xp_to_next_level: int = 0


class CharacterSheet(Payload, kw_only=True):
    user_id: str = ""
    level: int = 1
    total_xp: int = 0
    xp_into_level: int = 0
    xp_to_next_level: int = 0
    stats: dict[str, StatSheet] = {}
    achievements: list[str] = []
    latest_achievement: str | None = None
    activities: int = 0
    updated_at: dt.datetime | None = None


class CharacterGetRequest(Payload, kw_only=True):
    user_id: str
    transaction: str | int | None = None


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


# --- lifeops: timeline, streaks, Oura ------------------------------------------------------


class TimelineCompleteRequest(Payload, kw_only=True):
    user_id: str
    item_code: str
    completed_at: dt.datetime | None = None
    transaction: str | int | None = None


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
    code: str
    title: str
    activity_type: str
    xp: dict[str, int]
    window: str | None = None
    done: bool = False
    completed_at: dt.datetime | None = None
    current_streak: int = 0
    best_streak: int = 0
    xp_pending: bool = False


class TimelineDay(Payload, kw_only=True):
    user_id: str
    date: dt.date
    timezone: str
    items: list[TimelineItemState] = []
    done: int = 0
    total: int = 0


class TimelineGetRequest(Payload, kw_only=True):
    user_id: str
    date: dt.date | None = None
    transaction: str | int | None = None


class TimelineReply(Reply, kw_only=True):
    timeline: TimelineDay | None = None


class UserSettingsRequest(Payload, kw_only=True):
    user_id: str
    timezone: str
    transaction: str | int | None = None


class UserSettingsReply(Reply, kw_only=True):
    user_id: str | None = None
    timezone: str | None = None


class OuraDay(Payload, kw_only=True):
    date: dt.date
    scores: OuraScores


class OuraImportRequest(Payload, kw_only=True):
    user_id: str
    days: list[OuraDay]
    transaction: str | int | None = None


class OuraImportReply(Reply, kw_only=True):
    imported: int = 0
    skipped: int = 0


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
    """An HA MQTT discovery payload (sensor, binary_sensor or button); unset keys are left out."""

    name: str | None = None
    unique_id: str
    object_id: str
    default_entity_id: str
    device: HaDevice
    origin: HaOrigin
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
    qos: int | None = None


class SyncMarker(Payload, kw_only=True):
    nonce: str


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
    "SyncMarker": SyncMarker,
}
"""Schema name (as written in topics.toml) -> type."""
