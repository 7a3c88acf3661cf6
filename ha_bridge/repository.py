"""The bridge's tables: the latest mesh state per user, and which discovery topics it owns.

`ha_inputs` keeps each user's newest character sheet and timeline as the mesh published them;
`ha_entities` maps every retained topic the bridge publishes (discovery configs and device
states) to its owner (`user:<id>` or `mesh`), so a removed stat or item can be cleared. The
payloads themselves live in the runtime's `mesh_state` table and are published from there.
"""

from __future__ import annotations

import msgspec

from lifeops_contract.schemas import CharacterSheet, TimelineDay
from mesh import Migration, Tx, codec, state

MIGRATIONS = (
    Migration(
        1,
        (
            "CREATE TABLE IF NOT EXISTS ha_inputs ("
            " user_id TEXT PRIMARY KEY, sheet TEXT, timeline TEXT)",
            "CREATE TABLE IF NOT EXISTS ha_entities ( topic TEXT PRIMARY KEY, owner TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS ha_entities_owner ON ha_entities (owner)",
        ),
    ),
)

# The users stored so far, for the user-id registry (lifeops_contract.user_registry).
EXISTING_USERS = "SELECT user_id, '' AS seen FROM ha_inputs"


class Inputs(msgspec.Struct, kw_only=True):
    user_id: str
    sheet: CharacterSheet | None = None
    timeline: TimelineDay | None = None


class Desired(msgspec.Struct, frozen=True):
    """One retained topic the bridge wants on the broker."""

    topic: str
    topic_key: str
    payload: bytes


async def save_sheet(tx: Tx, sheet: CharacterSheet, *, only_if_missing: bool = False) -> None:
    await _save(tx, "sheet", sheet.user_id, codec.encode(sheet), only_if_missing)


async def save_timeline(tx: Tx, timeline: TimelineDay, *, only_if_missing: bool = False) -> None:
    await _save(tx, "timeline", timeline.user_id, codec.encode(timeline), only_if_missing)


async def _save(tx: Tx, column: str, user_id: str, body: bytes, only_if_missing: bool) -> None:
    """Upsert one of a user's inputs (`only_if_missing`: keep one already there, which is at
    least as new as an answer to the bridge's own request)."""
    assert column in ("sheet", "timeline")
    condition = f" WHERE ha_inputs.{column} IS NULL" if only_if_missing else ""
    await tx.execute(
        f"INSERT INTO ha_inputs (user_id, {column}) VALUES (?, ?)"
        f" ON CONFLICT (user_id) DO UPDATE SET {column} = excluded.{column}" + condition,
        user_id,
        body.decode(),
    )


async def add_user(tx: Tx, user_id: str) -> None:
    await tx.execute("INSERT INTO ha_inputs (user_id) VALUES (?) ON CONFLICT DO NOTHING", user_id)


async def load(tx: Tx, user_id: str) -> Inputs:
    row = await tx.fetchone("SELECT sheet, timeline FROM ha_inputs WHERE user_id = ?", user_id)
    return _inputs(user_id, row[0] if row else None, row[1] if row else None)


async def load_all(tx: Tx) -> list[Inputs]:
    rows = await tx.fetchall("SELECT user_id, sheet, timeline FROM ha_inputs ORDER BY user_id")
    return [_inputs(r[0], r[1], r[2]) for r in rows]


def _inputs(user_id: str, sheet: str | None, timeline: str | None) -> Inputs:
    return Inputs(
        user_id=user_id,
        sheet=codec.decode(sheet.encode(), CharacterSheet) if sheet else None,
        timeline=codec.decode(timeline.encode(), TimelineDay) if timeline else None,
    )


async def owned_topics(tx: Tx) -> set[str]:
    return {r[0] for r in await tx.fetchall("SELECT topic FROM ha_entities")}


async def sync_owner(tx: Tx, owner: str, desired: list[Desired], trace_id: str | None) -> int:
    """Make `owner`'s retained topics exactly `desired`: new or changed payloads are staged for
    publishing, topics no longer wanted are cleared (empty retained payload). Returns the
    number of topics staged; unchanged payloads are not published again."""
    owned = [
        r[0] for r in await tx.fetchall("SELECT topic FROM ha_entities WHERE owner = ?", owner)
    ]
    on_file = await state.read_many(tx, owned)
    current = {t: on_file.get(t) for t in owned}
    wanted = {d.topic for d in desired}
    staged = 0
    for topic in sorted(set(current) - wanted):
        await clear(tx, topic, trace_id)
        await tx.execute("DELETE FROM ha_entities WHERE topic = ?", topic)
        staged += 1
    for d in desired:
        if d.topic not in current:
            await tx.execute(
                "INSERT INTO ha_entities (topic, owner) VALUES (?, ?)"
                " ON CONFLICT (topic) DO UPDATE SET owner = excluded.owner",
                d.topic,
                owner,
            )
        if current.get(d.topic) != d.payload:
            await state.put(
                tx, topic=d.topic, topic_key=d.topic_key, payload=d.payload, trace_id=trace_id
            )
            staged += 1
    return staged


async def clear(tx: Tx, topic: str, trace_id: str | None) -> None:
    """Stage an empty retained payload: the broker drops the message, HA the entity (or, for
    a device-based config `<prefix>/device/<node_id>/config`, the device's entities)."""
    parts = topic.split("/")
    key = "ha_device_discovery" if len(parts) == 4 and parts[1] == "device" else "ha_discovery"
    await state.put(tx, topic=topic, topic_key=key, payload=b"", trace_id=trace_id)
