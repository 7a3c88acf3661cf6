"""SQL of the LifeOps agent: users, completions, Oura days."""

from __future__ import annotations

import datetime as dt
from typing import Any

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
    # Streaks without reading whole histories: completions by user and day, best streaks kept.
    Migration(
        2,
        (
            "CREATE INDEX IF NOT EXISTS lifeops_completions_day"
            " ON lifeops_completions (user_id, day)",
            "CREATE TABLE IF NOT EXISTS lifeops_best_streaks ("
            " user_id TEXT NOT NULL, item_code TEXT NOT NULL, best INTEGER NOT NULL,"
            " PRIMARY KEY (user_id, item_code))",
        ),
    ),
    # A day Oura revises later (a partial day completed by a later sync) is stored again.
    Migration(
        3,
        (
            "ALTER TABLE lifeops_oura_days ADD COLUMN revision INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE lifeops_oura_days ADD COLUMN revised_at TEXT",
        ),
    ),
)

# The users stored so far, for the user-id registry (lifeops_contract.user_registry).
EXISTING_USERS = (
    "SELECT user_id, MIN(seen) AS seen FROM ("
    " SELECT user_id, updated_at AS seen FROM lifeops_users"
    " UNION ALL SELECT user_id, completed_at FROM lifeops_completions"
    " UNION ALL SELECT user_id, imported_at FROM lifeops_oura_days) stored GROUP BY user_id"
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


_COMPLETION = "item_code, day, completed_at, activity_id, streak, result, xp_pending"


async def completions_between(tx: Tx, user_id: str, lo: dt.date, hi: dt.date) -> list[Completion]:
    """A user's completions of local days lo..hi (inclusive)."""
    rows = await tx.fetchall(
        f"SELECT {_COMPLETION} FROM lifeops_completions"
        " WHERE user_id = ? AND day >= ? AND day <= ?",
        user_id,
        lo.isoformat(),
        hi.isoformat(),
    )
    return _completions(rows)


async def all_completions(tx: Tx) -> list[tuple[str, Completion]]:
    """(user id, completion) of everyone: only for the one-time best-streak backfill."""
    rows = await tx.fetchall(f"SELECT user_id, {_COMPLETION} FROM lifeops_completions")
    return [(r[0], c) for r, c in zip(rows, _completions([r[1:] for r in rows]), strict=True)]


async def first_day(tx: Tx, user_id: str) -> dt.date | None:
    row = await tx.fetchone("SELECT MIN(day) FROM lifeops_completions WHERE user_id = ?", user_id)
    return dt.date.fromisoformat(str(row[0])) if row and row[0] else None


async def best_streaks(tx: Tx, user_id: str) -> dict[str, int]:
    rows = await tx.fetchall(
        "SELECT item_code, best FROM lifeops_best_streaks WHERE user_id = ?", user_id
    )
    return {r[0]: int(r[1]) for r in rows}


async def has_best_streaks(tx: Tx) -> bool:
    return await tx.fetchone("SELECT 1 FROM lifeops_best_streaks LIMIT 1") is not None


def _completions(rows: list[tuple[Any, ...]]) -> list[Completion]:
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


async def store_result(tx: Tx, activity_id: str, result: str) -> tuple[str, str, dt.date] | None:
    """Fill in Stats' answer; returns the completion's (user id, item code, local day)."""
    row = await tx.fetchone(
        "UPDATE lifeops_completions SET result = ?, xp_pending = 0 WHERE activity_id = ?"
        " RETURNING user_id, item_code, day",
        result,
        activity_id,
    )
    return (row[0], row[1], dt.date.fromisoformat(str(row[2]))) if row else None


class StoredOuraDay(msgspec.Struct, frozen=True):
    scores: str  # OuraScores as JSON
    revision: int


async def oura_days(tx: Tx, user_id: str, wanted: list[dt.date]) -> dict[dt.date, StoredOuraDay]:
    """The stored versions of some of a user's days (one query)."""
    if not wanted:
        return {}
    rows = await tx.fetchall(
        "SELECT day, scores, revision FROM lifeops_oura_days WHERE user_id = ?"
        " AND day >= ? AND day <= ?",
        user_id,
        min(wanted).isoformat(),
        max(wanted).isoformat(),
    )
    return {dt.date.fromisoformat(str(r[0])): StoredOuraDay(r[1], int(r[2])) for r in rows}


async def last_oura_day(tx: Tx, user_id: str) -> dt.date | None:
    """The latest day stored for a user (where an incremental sync starts)."""
    row = await tx.fetchone("SELECT MAX(day) FROM lifeops_oura_days WHERE user_id = ?", user_id)
    return dt.date.fromisoformat(str(row[0])) if row and row[0] else None


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


async def revise_oura_day(
    tx: Tx, user_id: str, day: dt.date, scores: str, revision: int, now: dt.datetime
) -> bool:
    """Store a day's next version; False when another writer revised it first."""
    n = await tx.execute(
        "UPDATE lifeops_oura_days SET scores = ?, revision = ?, revised_at = ?"
        " WHERE user_id = ? AND day = ? AND revision = ?",
        scores,
        revision,
        now.isoformat(),
        user_id,
        day.isoformat(),
        revision - 1,
    )
    return n == 1


# -- a batch's reads and writes: one statement per table, whatever the batch's size ----------

_CHUNK = 500  # bound parameters per statement (SQLite allows 32766; PostgreSQL 32767)


def _chunks(users: list[str]) -> list[list[str]]:
    return [users[i : i + _CHUNK] for i in range(0, len(users), _CHUNK)]


def _marks(n: int) -> str:
    return ", ".join("?" for _ in range(n))


async def user_timezones(tx: Tx, users: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in _chunks(users):
        rows = await tx.fetchall(
            f"SELECT user_id, timezone FROM lifeops_users WHERE user_id IN ({_marks(len(part))})",
            *part,
        )
        out.update({r[0]: r[1] for r in rows})
    return out


async def first_days(tx: Tx, users: list[str]) -> dict[str, dt.date]:
    out: dict[str, dt.date] = {}
    for part in _chunks(users):
        rows = await tx.fetchall(
            "SELECT user_id, MIN(day) FROM lifeops_completions"
            f" WHERE user_id IN ({_marks(len(part))}) GROUP BY user_id",
            *part,
        )
        out.update({r[0]: dt.date.fromisoformat(str(r[1])) for r in rows if r[1]})
    return out


async def best_streaks_of(tx: Tx, users: list[str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {u: {} for u in users}
    for part in _chunks(users):
        rows = await tx.fetchall(
            "SELECT user_id, item_code, best FROM lifeops_best_streaks"
            f" WHERE user_id IN ({_marks(len(part))})",
            *part,
        )
        for r in rows:
            out[r[0]][r[1]] = int(r[2])
    return out


async def completions_of(
    tx: Tx, users: list[str], lo: dt.date, hi: dt.date
) -> dict[str, list[Completion]]:
    """Completions of local days lo..hi (inclusive) of several users."""
    out: dict[str, list[Completion]] = {u: [] for u in users}
    for part in _chunks(users):
        rows = await tx.fetchall(
            f"SELECT user_id, {_COMPLETION} FROM lifeops_completions"
            f" WHERE user_id IN ({_marks(len(part))}) AND day >= ? AND day <= ?",
            *part,
            lo.isoformat(),
            hi.isoformat(),
        )
        for r, c in zip(rows, _completions([r[1:] for r in rows]), strict=True):
            out[r[0]].append(c)
    return out


def defer_completion(tx: Tx, user_id: str, c: Completion) -> None:
    """Written with the batch's other completions in one statement at commit."""
    tx.defer(
        "INSERT INTO lifeops_completions (user_id, item_code, day, completed_at, activity_id,"
        " streak, result, xp_pending) VALUES (?, ?, ?, ?, ?, ?, NULL, 1) ON CONFLICT DO NOTHING",
        user_id,
        c.item_code,
        c.day.isoformat(),
        c.completed_at.isoformat(),
        c.activity_id,
        c.streak,
    )


def defer_raise_best(tx: Tx, user_id: str, item_code: str, run: int) -> None:
    """The best streak of (user, item) is at least `run` (written with the batch's others)."""
    tx.defer(
        "INSERT INTO lifeops_best_streaks (user_id, item_code, best) VALUES (?, ?, ?)"
        " ON CONFLICT (user_id, item_code) DO UPDATE SET"
        " best = CASE WHEN excluded.best > lifeops_best_streaks.best"
        " THEN excluded.best ELSE lifeops_best_streaks.best END",
        user_id,
        item_code,
        run,
    )
