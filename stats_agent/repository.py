"""SQL of the Stats agent: characters, per-stat XP, activities, achievements; a batch's one
load and one write."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import msgspec

from lifeops_contract.schemas import (
    AchievementUnlocked,
    ActivityLogReply,
    CharacterSheet,
    LevelUp,
    StatSheet,
)
from lifeops_contract.user_registry import UserRegistry
from mesh import Migration, Tx, codec
from stats_agent import batch, ledger
from stats_agent.batch import OuraVersion
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
    # The (source, source_ref) key led by source_ref, the selective column: a batch's lookup
    # `source = ? AND source_ref IN (...)` then never depends on the planner's estimate for
    # `source` (one value for most rows). Measured on PostgreSQL with a young table whose
    # statistics lagged: the planner scanned every row of the source and filtered, and the
    # database's CPU, not the agent, bounded throughput.
    Migration(
        3,
        (
            "CREATE UNIQUE INDEX IF NOT EXISTS stats_activities_ref"
            " ON stats_activities (source_ref, source)",
            "DROP INDEX IF EXISTS stats_activities_source",
        ),
    ),
    # An Oura day's identity as columns: the user (user_id), the day and the revision (NULL for
    # every other activity), read as such instead of parsed out of source_ref
    # (`oura:<user>:<date>` or `oura:<user>:<date>:rev<n>`, kept: it is the activity's
    # (source, source_ref) identity). Existing rows are filled from that string once, here;
    # only a ref that starts with its own row's user counts.
    Migration(
        4,
        (
            "ALTER TABLE stats_activities ADD COLUMN day TEXT",
            "ALTER TABLE stats_activities ADD COLUMN revision INTEGER",
            "UPDATE stats_activities SET day = substr(source_ref, length(user_id) + 7, 10),"
            " revision = CASE WHEN length(source_ref) > length(user_id) + 16"
            " THEN CAST(substr(source_ref, length(user_id) + 21) AS INTEGER) ELSE 0 END"
            " WHERE source = 'lifeops' AND activity_type = 'oura_daily'"
            " AND substr(source_ref, 1, length(user_id) + 6) = 'oura:' || user_id || ':'",
            "CREATE UNIQUE INDEX IF NOT EXISTS stats_activities_day"
            " ON stats_activities (user_id, day, revision) WHERE day IS NOT NULL",
        ),
    ),
)

# The users stored so far, for the user-id registry (lifeops_contract.user_registry).
EXISTING_USERS = "SELECT user_id, created_at AS seen FROM stats_characters"


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


def insert_activity(
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
    day: dt.date | None = None,
    revision: int | None = None,
) -> None:
    """An activity's row; `day` and `revision` for a version of an Oura day."""
    tx.defer(
        "INSERT INTO stats_activities (activity_id, user_id, activity_type, source, source_ref,"
        " activity_time, xp, reply, created_at, day, revision)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        activity_id,
        user_id,
        activity_type,
        source,
        source_ref,
        activity_time.isoformat() if activity_time else None,
        xp,
        reply,
        now.isoformat(),
        day.isoformat() if day else None,
        revision,
    )


def keep_levelup(tx: Tx, event: LevelUp) -> None:
    tx.defer(
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
    xp: dict[str, int] = {}
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
    return build_sheet(user_id, stats, total, activities, updated, xp, codes)


def build_sheet(
    user_id: str,
    stats: list[str],
    total: int,
    activities: int,
    updated: str,
    xp: dict[str, int],
    codes: list[str],
) -> CharacterSheet:
    """The character sheet of these figures (every stat of the rules, 0 when never granted)."""
    char = level_for(total)
    sheets = {}
    for stat, value in {**dict.fromkeys(stats, 0), **xp}.items():
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


# -- a batch at a time: one statement per table, whatever the batch's size ----------------------


def _marks(n: int) -> str:
    return ", ".join("?" for _ in range(n))


async def replies_by_source(tx: Tx, refs: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(source, source_ref) -> the stored reply, for activities already known (one query per
    source, on the unique index)."""
    by_source: dict[str, list[str]] = {}
    for source, ref in refs:
        by_source.setdefault(source, []).append(ref)
    out: dict[tuple[str, str], str] = {}
    for source, wanted in by_source.items():
        for ref, reply in await tx.fetchall(
            "SELECT source_ref, reply FROM stats_activities"
            f" WHERE source = ? AND source_ref IN ({_marks(len(wanted))})",
            source,
            *wanted,
        ):
            out[(source, ref)] = reply
    return out


async def oura_versions(tx: Tx, days: list[tuple[str, dt.date]]) -> list[OuraVersion]:
    """Every version Stats has of these (user, day)s (one query, on the day's index)."""
    wanted = sorted(set(days))
    if not wanted:
        return []
    where = " OR ".join("(user_id = ? AND day = ?)" for _ in wanted)
    args = [v for user, day in wanted for v in (user, day.isoformat())]
    rows = await tx.fetchall(
        "SELECT user_id, day, revision, xp, reply FROM stats_activities"
        f" WHERE day IS NOT NULL AND ({where})",
        *args,
    )
    return [
        OuraVersion(
            user_id=r[0],
            day=dt.date.fromisoformat(str(r[1])),
            revision=int(r[2]),
            xp=codec.decode(str(r[3]).encode(), dict[str, int]),
            reply=r[4],
        )
        for r in rows
    ]


async def activities_by_id(tx: Tx, ids: list[str]) -> dict[str, tuple[str, str]]:
    """activity_id -> (user id, stored reply), for the ids already taken."""
    if not ids:
        return {}
    rows = await tx.fetchall(
        f"SELECT activity_id, user_id, reply FROM stats_activities"
        f" WHERE activity_id IN ({_marks(len(ids))})",
        *ids,
    )
    return {r[0]: (r[1], r[2]) for r in rows}


def add_xp(
    tx: Tx, gains: dict[str, tuple[int, int]], stat_gains: dict[tuple[str, str], int], now: str
) -> None:
    """Add each user's XP and activity count, and each stat's XP (users and stats in a fixed
    order: concurrent agents lock rows alike, no deadlock); written with the batch's others."""
    users = sorted(gains)
    values = ", ".join("(?, ?, ?, ?, ?)" for _ in users)
    args: list[object] = []
    for u in users:
        args += [u, gains[u][0], gains[u][1], now, now]
    tx.defer(
        "INSERT INTO stats_characters (user_id, total_xp, activities, created_at, updated_at)"
        f" VALUES {values} ON CONFLICT (user_id) DO UPDATE SET"
        " total_xp = stats_characters.total_xp + excluded.total_xp,"
        " activities = stats_characters.activities + excluded.activities,"
        " updated_at = excluded.updated_at",
        *args,
    )
    for (user, stat), xp in sorted(stat_gains.items()):
        tx.defer(
            "INSERT INTO stats_stat_xp (user_id, stat, xp) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id, stat) DO UPDATE SET xp = stats_stat_xp.xp + excluded.xp",
            user,
            stat,
            xp,
        )


async def characters(tx: Tx, users: list[str]) -> dict[str, ledger.Character]:
    """Each user's character as stored (absent: none yet), in one statement: (2, user, NULL,
    total XP, activities) rows, (0, user, stat, XP) rows, and (1, user, code, 0, awarded_at)
    rows in the order the achievements were awarded."""
    out: dict[str, ledger.Character] = {}
    marks = _marks(len(users))
    for kind, user, name, value, extra in await tx.fetchall(
        f"SELECT 0, user_id, stat, xp, NULL FROM stats_stat_xp WHERE user_id IN ({marks})"
        " UNION ALL SELECT 1, user_id, code, 0, awarded_at FROM stats_achievements"
        f" WHERE user_id IN ({marks})"
        " UNION ALL SELECT 2, user_id, NULL, total_xp, CAST(activities AS TEXT)"
        f" FROM stats_characters WHERE user_id IN ({marks}) ORDER BY 1, 5, 3",
        *users,
        *users,
        *users,
    ):
        c = out.setdefault(user, ledger.Character())
        if kind == 0:
            c.stat_xp[name] = int(value)
        elif kind == 1:
            c.achievements.append(name)
        else:
            c.total_xp, c.activities = int(value), int(extra)
    return out


async def award_many(
    tx: Tx, awards: list[tuple[str, str, str, str]], now: str
) -> set[tuple[str, str]]:
    """Insert (user, code, title, activity_id) achievements; returns the (user, code) that
    were new (another agent may have just awarded one)."""
    if not awards:
        return set()
    ordered = sorted(awards)
    values = ", ".join("(?, ?, ?, ?, ?)" for _ in ordered)
    args: list[object] = []
    for user, code, title, activity_id in ordered:
        args += [user, code, title, activity_id, now]
    rows = await tx.fetchall(
        "INSERT INTO stats_achievements (user_id, code, title, activity_id, awarded_at)"
        f" VALUES {values} ON CONFLICT DO NOTHING RETURNING user_id, code",
        *args,
    )
    return {(r[0], r[1]) for r in rows}


# -- a batch of XP grants: one load, one write --------------------------------------------------


class BatchState(msgspec.Struct):
    """What a batch of XP grants needs: the screen of its messages (`screened.answers`
    answers the others), the fresh ones refused as another user's spelling (with the
    spelling that holds it), the fresh ones admitted, the activity ids among them already
    taken (id -> (user, reply)), and the characters they grant to, as stored."""

    screened: batch.Screened
    refused: list[tuple[batch.Pending, str]]
    fresh: list[batch.Pending]
    taken_ids: dict[str, tuple[str, str]]
    before: dict[str, ledger.Character]


async def load_batch(
    tx: Tx,
    refs: list[tuple[str, str]],
    days: list[tuple[str, dt.date]],
    screen: Callable[[batch.Earlier], batch.Screened],
    registry: UserRegistry,
) -> BatchState:
    """Everything a batch of XP grants reads, in `tx` under its users' character locks
    (Route.locks): what Stats has of its messages (replies by (source, `refs`), versions of
    the Oura `days`), which `screen` (pure) turns into the fresh ones; their users admitted
    by the user-id registry (a new user is recorded with its first write); the activity ids
    already taken; the characters as they are before the batch. One statement per table."""
    replies = await replies_by_source(tx, refs) if refs else {}
    screened = screen(batch.Earlier(replies, await oura_versions(tx, days)))
    if not screened.fresh:
        return BatchState(screened, [], [], {}, {})
    fresh = screened.fresh
    held = await registry.admit(tx, [p.grant.user_id for p in fresh], fresh[0].now)
    refused = [(p, held[p.grant.user_id]) for p in fresh if p.grant.user_id in held]
    admitted = [p for p in fresh if p.grant.user_id not in held]
    ids = await activities_by_id(tx, [p.grant.activity_id for p in admitted])
    users = sorted({p.grant.user_id for p in admitted if p.grant.activity_id not in ids})
    before = await characters(tx, users) if users else {}
    return BatchState(screened, refused, admitted, ids, before)


async def write_batch(
    tx: Tx, d: batch.Decision, at: str
) -> tuple[set[tuple[str, str]], list[tuple[ActivityLogReply, list[str]]]]:
    """Each kind of write for the whole batch in turn, so each is one statement: characters
    and stats incremented (concurrent agents add, never overwrite), achievements, level-ups,
    activities. Returns the (user, code) achievements stored (another agent may have awarded
    one a moment ago) and each activity's final reply and achievements (`batch.final`)."""
    if not d.todo:
        return set(), []
    add_xp(tx, d.gains, d.stat_gains, at)
    awarded = await award_many(tx, d.awards, at)
    for a in d.applied:
        for event in a.levelups:
            keep_levelup(tx, event)
    finals = [batch.final(a, awarded) for a in d.applied]
    for p, (reply, _) in zip(d.todo, finals, strict=True):
        g = p.grant
        insert_activity(
            tx,
            activity_id=g.activity_id,
            user_id=g.user_id,
            activity_type=p.activity_type,
            source=p.source,
            source_ref=p.source_ref,
            activity_time=p.activity_time,
            xp=codec.encode(g.grants).decode(),
            reply=codec.encode(reply).decode(),
            now=p.now,
            day=p.day,
            revision=p.revision,
        )
    return awarded, finals
