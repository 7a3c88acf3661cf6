"""SQL of the Stats agent: characters, per-stat XP, activities, achievements."""

from __future__ import annotations

import datetime as dt

from lifeops_contract.schemas import AchievementUnlocked, CharacterSheet, LevelUp, StatSheet
from mesh import Migration, Tx, codec
from stats_agent.game import level_for

MIGRATIONS = (
    Migration(
        1,
        (
            "CREATE TABLE IF NOT EXISTS stats_characters ("
            " user_id TEXT PRIMARY KEY, total_xp BIGINT NOT NULL DEFAULT 0,"
            " activities BIGINT NOT NULL DEFAULT 0, created_at TEXT NOT NULL,"
            " updated_at TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS stats_stat_xp ("
            " user_id TEXT NOT NULL, stat TEXT NOT NULL, xp BIGINT NOT NULL DEFAULT 0,"
            " PRIMARY KEY (user_id, stat))",
            "CREATE TABLE IF NOT EXISTS stats_activities ("
            " activity_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, activity_type TEXT NOT NULL,"
            " source TEXT NOT NULL, source_ref TEXT, activity_time TEXT, xp TEXT NOT NULL,"
            " reply TEXT NOT NULL, created_at TEXT NOT NULL)",
            "CREATE UNIQUE INDEX IF NOT EXISTS stats_activities_source"
            " ON stats_activities (source, source_ref)",
            "CREATE INDEX IF NOT EXISTS stats_activities_user ON stats_activities (user_id)",
            "CREATE TABLE IF NOT EXISTS stats_achievements ("
            " user_id TEXT NOT NULL, code TEXT NOT NULL, title TEXT NOT NULL,"
            " activity_id TEXT NOT NULL, awarded_at TEXT NOT NULL, PRIMARY KEY (user_id, code))",
        ),
    ),
    # Level-ups kept, so subscribers can catch up on the events (stats/events/recent).
    Migration(
        2,
        (
            "CREATE TABLE IF NOT EXISTS stats_levelups ("
            " event_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, body TEXT NOT NULL,"
            " occurred_at TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS stats_levelups_user"
            " ON stats_levelups (user_id, occurred_at)",
        ),
    ),
)


async def add_character_xp(tx: Tx, user_id: str, xp: int, now: dt.datetime) -> tuple[int, int]:
    """Add XP and one activity; returns (total XP after, activities after). Locks the row."""
    row = await tx.fetchone(
        "INSERT INTO stats_characters (user_id, total_xp, activities, created_at, updated_at)"
        " VALUES (?, ?, 1, ?, ?) ON CONFLICT (user_id) DO UPDATE SET"
        " total_xp = stats_characters.total_xp + excluded.total_xp,"
        " activities = stats_characters.activities + 1, updated_at = excluded.updated_at"
        " RETURNING total_xp, activities",
        user_id,
        xp,
        now.isoformat(),
        now.isoformat(),
    )
    assert row is not None
    return int(row[0]), int(row[1])


async def add_stats_xp(tx: Tx, user_id: str, grants: dict[str, int]) -> dict[str, int]:
    """Add XP to several stats in one statement; returns each stat's XP after."""
    values = ", ".join("(?, ?, ?)" for _ in grants)
    args: list[object] = []
    for stat, xp in grants.items():
        args += [user_id, stat, xp]
    rows = await tx.fetchall(
        f"INSERT INTO stats_stat_xp (user_id, stat, xp) VALUES {values}"
        " ON CONFLICT (user_id, stat) DO UPDATE SET xp = stats_stat_xp.xp + excluded.xp"
        " RETURNING stat, xp",
        *args,
    )
    return {r[0]: int(r[1]) for r in rows}


async def activity_by_id(tx: Tx, activity_id: str) -> tuple[str, str] | None:
    """(user id, stored reply) of an activity, None when there is none."""
    row = await tx.fetchone(
        "SELECT user_id, reply FROM stats_activities WHERE activity_id = ?", activity_id
    )
    return (row[0], row[1]) if row else None


async def activity_by_source(tx: Tx, source: str, source_ref: str) -> str | None:
    row = await tx.fetchone(
        "SELECT reply FROM stats_activities WHERE source = ? AND source_ref = ?", source, source_ref
    )
    return row[0] if row else None


async def insert_activity(
    tx: Tx,
    *,
    activity_id: str,
    user_id: str,
    activity_type: str,
    source: str,
    source_ref: str | None,
    activity_time: dt.datetime | None,
    xp: str,
    reply: str,
    now: dt.datetime,
) -> None:
    await tx.execute(
        "INSERT INTO stats_activities (activity_id, user_id, activity_type, source, source_ref,"
        " activity_time, xp, reply, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        activity_id,
        user_id,
        activity_type,
        source,
        source_ref,
        activity_time.isoformat() if activity_time else None,
        xp,
        reply,
        now.isoformat(),
    )


async def keep_levelup(tx: Tx, event: LevelUp) -> None:
    await tx.execute(
        "INSERT INTO stats_levelups (event_id, user_id, body, occurred_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        event.event_id,
        event.user_id,
        codec.encode(event).decode(),
        event.occurred_at.isoformat(),
    )


async def events_since(
    tx: Tx, user_id: str, since: dt.datetime | None, limit: int
) -> tuple[list[LevelUp], list[AchievementUnlocked]]:
    """A user's level-ups and achievements at or after `since`, oldest first."""
    after = (since or dt.datetime(1970, 1, 1, tzinfo=dt.UTC)).isoformat()
    ups = await tx.fetchall(
        "SELECT body FROM stats_levelups WHERE user_id = ? AND occurred_at >= ?"
        " ORDER BY occurred_at, event_id LIMIT ?",
        user_id,
        after,
        limit,
    )
    achs = await tx.fetchall(
        "SELECT code, title, activity_id, awarded_at FROM stats_achievements"
        " WHERE user_id = ? AND awarded_at >= ? ORDER BY awarded_at, code LIMIT ?",
        user_id,
        after,
        limit,
    )
    levelups = [codec.decode(r[0].encode(), LevelUp) for r in ups]
    achievements = [
        AchievementUnlocked(
            event_id=f"ach:{user_id}:{r[0]}",
            user_id=user_id,
            achievement_code=r[0],
            title=r[1],
            activity_id=r[2],
            awarded_at=dt.datetime.fromisoformat(r[3]),
        )
        for r in achs
    ]
    return levelups, achievements


async def award(
    tx: Tx, user_id: str, code: str, title: str, activity_id: str, now: dt.datetime
) -> bool:
    """True when the achievement is new for this user."""
    n = await tx.execute(
        "INSERT INTO stats_achievements (user_id, code, title, activity_id, awarded_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        user_id,
        code,
        title,
        activity_id,
        now.isoformat(),
    )
    return n == 1


async def character_sheet(
    tx: Tx, user_id: str, stats: list[str], known: tuple[int, int, str] | None = None
) -> CharacterSheet | None:
    """The sheet; `known` = (total XP, activities, updated_at) saves a read when just written."""
    if known is None:
        row = await tx.fetchone(
            "SELECT total_xp, activities, updated_at FROM stats_characters WHERE user_id = ?",
            user_id,
        )
        if row is None:
            return None
        known = (int(row[0]), int(row[1]), row[2])
    total, activities, updated = known
    xp = {s: 0 for s in stats}
    codes: list[str] = []
    # Stats and achievements in one statement: (0, stat, xp, NULL) rows, then (1, code, 0,
    # awarded_at) rows in the order they were awarded.
    for kind, name, value, _ in await tx.fetchall(
        "SELECT 0, stat, xp, NULL FROM stats_stat_xp WHERE user_id = ?"
        " UNION ALL SELECT 1, code, 0, awarded_at FROM stats_achievements WHERE user_id = ?"
        " ORDER BY 1, 4, 2",
        user_id,
        user_id,
    ):
        if kind == 0:
            xp[name] = int(value)
        else:
            codes.append(name)
    char = level_for(total)
    sheets = {}
    for stat, value in xp.items():
        info = level_for(value)
        sheets[stat] = StatSheet(
            xp=value,
            level=info.level,
            xp_into_level=info.xp_into_level,
            xp_to_next_level=info.xp_to_next_level,
        )
    return CharacterSheet(
        user_id=user_id,
        level=char.level,
        total_xp=total,
        xp_into_level=char.xp_into_level,
        xp_to_next_level=char.xp_to_next_level,
        stats=sheets,
        achievements=codes,
        latest_achievement=codes[-1] if codes else None,
        activities=activities,
        updated_at=dt.datetime.fromisoformat(updated),
    )
