"""SQL of the LifeOps agent: users, completions, Oura days."""

from __future__ import annotations

import datetime as dt

import msgspec

from mesh import Migration, Tx

MIGRATIONS = (
    Migration(
        1,
        (
            "CREATE TABLE IF NOT EXISTS lifeops_users ("
            " user_id TEXT PRIMARY KEY, timezone TEXT NOT NULL, updated_at TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS lifeops_completions ("
            " user_id TEXT NOT NULL, item_code TEXT NOT NULL, day TEXT NOT NULL,"
            " completed_at TEXT NOT NULL, activity_id TEXT NOT NULL UNIQUE,"
            " streak INTEGER NOT NULL, result TEXT, xp_pending INTEGER NOT NULL,"
            " PRIMARY KEY (user_id, item_code, day))",
            "CREATE TABLE IF NOT EXISTS lifeops_oura_days ("
            " user_id TEXT NOT NULL, day TEXT NOT NULL, scores TEXT NOT NULL,"
            " imported_at TEXT NOT NULL, PRIMARY KEY (user_id, day))",
        ),
    ),
)


class Completion(msgspec.Struct, frozen=True):
    item_code: str
    day: dt.date
    completed_at: dt.datetime
    activity_id: str
    streak: int
    result: str | None
    xp_pending: bool


async def user_timezone(tx: Tx, user_id: str) -> str | None:
    row = await tx.fetchone("SELECT timezone FROM lifeops_users WHERE user_id = ?", user_id)
    return row[0] if row else None


async def set_user_timezone(tx: Tx, user_id: str, tz: str, now: dt.datetime) -> None:
    await tx.execute(
        "INSERT INTO lifeops_users (user_id, timezone, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (user_id) DO UPDATE SET timezone = excluded.timezone,"
        " updated_at = excluded.updated_at",
        user_id,
        tz,
        now.isoformat(),
    )


async def completions(tx: Tx, user_id: str) -> list[Completion]:
    rows = await tx.fetchall(
        "SELECT item_code, day, completed_at, activity_id, streak, result, xp_pending"
        " FROM lifeops_completions WHERE user_id = ?",
        user_id,
    )
    return [
        Completion(
            r[0],
            dt.date.fromisoformat(r[1]),
            dt.datetime.fromisoformat(r[2]),
            r[3],
            int(r[4]),
            r[5],
            bool(r[6]),
        )
        for r in rows
    ]


async def insert_completion(tx: Tx, user_id: str, c: Completion) -> bool:
    """False when the item was already completed that day."""
    n = await tx.execute(
        "INSERT INTO lifeops_completions (user_id, item_code, day, completed_at, activity_id,"
        " streak, result, xp_pending) VALUES (?, ?, ?, ?, ?, ?, NULL, 1) ON CONFLICT DO NOTHING",
        user_id,
        c.item_code,
        c.day.isoformat(),
        c.completed_at.isoformat(),
        c.activity_id,
        c.streak,
    )
    return n == 1


async def store_result(tx: Tx, activity_id: str, result: str) -> tuple[str, str, dt.date] | None:
    """Fill in Stats' answer; returns the completion's (user id, item code, local day)."""
    row = await tx.fetchone(
        "UPDATE lifeops_completions SET result = ?, xp_pending = 0 WHERE activity_id = ?"
        " RETURNING user_id, item_code, day",
        result,
        activity_id,
    )
    return (row[0], row[1], dt.date.fromisoformat(str(row[2]))) if row else None


async def insert_oura_day(
    tx: Tx, user_id: str, day: dt.date, scores: str, now: dt.datetime
) -> bool:
    n = await tx.execute(
        "INSERT INTO lifeops_oura_days (user_id, day, scores, imported_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        user_id,
        day.isoformat(),
        scores,
        now.isoformat(),
    )
    return n == 1
