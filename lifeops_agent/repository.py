"""SQL of the LifeOps agent: users, completions, Oura days; a batch's one load and one write."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from lifeops_agent import days, history, streaks
from lifeops_agent.history import Completion, History
from lifeops_agent.locks import user_lock
from lifeops_contract.schemas import OuraScores
from lifeops_contract.user_registry import UserRegistry
from lifeops_oura import token_store as oura_tables
from mesh import Migration, Tx, codec

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
    # Oura OAuth tokens (`lifeops-mesh oura login`) and each user's last sync and failure.
    Migration(4, oura_tables.TABLES),
)

# The users stored so far, for the user-id registry (lifeops_contract.user_registry).
EXISTING_USERS = (
    "SELECT user_id, MIN(seen) AS seen FROM ("
    " SELECT user_id, updated_at AS seen FROM lifeops_users"
    " UNION ALL SELECT user_id, completed_at FROM lifeops_completions"
    " UNION ALL SELECT user_id, imported_at FROM lifeops_oura_days) stored GROUP BY user_id"
)


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


class OuraVersion(msgspec.Struct, frozen=True):
    """A version of a user's day to store: revision 0 is the day's first."""

    day: dt.date
    scores: OuraScores
    revision: int


async def load_oura_days(
    tx: Tx, user_id: str, wanted: list[dt.date], registry: UserRegistry, now: dt.datetime
) -> dict[dt.date, StoredOuraDay]:
    """What an Oura import reads, under the user's lock taken first (agents sharing the
    database take turns per user): the user admitted (or refused: HandlerError
    `user_id_taken`), then the stored versions of the days."""
    await tx.lock([user_lock(user_id)])
    await registry.check(tx, user_id, now)
    return await oura_days(tx, user_id, wanted)


async def write_oura_days(
    tx: Tx, user_id: str, versions: list[OuraVersion], now: dt.datetime
) -> list[OuraVersion]:
    """Store the versions in order; returns those stored. A day another writer stored or
    revised first is not (nor its later versions in `versions`: they followed the lost one)."""
    stored, lost = [], set()
    for v in versions:
        if v.day in lost:
            continue
        scores = codec.encode(v.scores).decode()
        if v.revision == 0:
            kept = await insert_oura_day(tx, user_id, v.day, scores, now)
        else:
            kept = await revise_oura_day(tx, user_id, v.day, scores, v.revision, now)
        if kept:
            stored.append(v)
        else:
            lost.add(v.day)
    return stored


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


# -- histories: a window around the days in question, widened while a run reaches its edge ----


async def load_history(
    tx: Tx, user_id: str, around: dt.date, today: dt.date, items: list[str]
) -> tuple[History, dict[str, int]]:
    """A window of history around `around` and `today`, wide enough that every item's run at
    `around`, after `around`, and up to `today` is inside it; with the best streaks."""
    earliest = await first_day(tx, user_id)
    return await _widening(tx, user_id, [around], today, items, earliest, history.WINDOW)


async def _widening(
    tx: Tx,
    user_id: str,
    around: list[dt.date],
    today: dt.date,
    items: list[str],
    earliest: dt.date | None,
    width: int,
) -> tuple[History, dict[str, int]]:
    while True:
        lo, hi = history.window(around, today, width)
        found = History(await completions_between(tx, user_id, lo, hi), lo, hi, earliest)
        if history.fits(found, items, around, today):
            return found, await best_streaks(tx, user_id)
        width *= 4


async def load_histories(
    tx: Tx, wanted: dict[str, tuple[list[dt.date], dt.date]], items: list[str]
) -> streaks.Histories:
    """`load_history` for the users of a batch, {user: (the days in question, today)}: one
    query per table for all of them (a window per distinct span, usually one); a user whose
    runs reach past the window is read again alone, widening as `load_history` does."""
    users = sorted(wanted)
    earliest = await first_days(tx, users)
    best = await best_streaks_of(tx, users)
    spans: dict[tuple[dt.date, dt.date], list[str]] = {}
    for user, (around, today) in wanted.items():
        spans.setdefault(history.window(around, today, history.WINDOW), []).append(user)
    out: streaks.Histories = {}
    for (lo, hi), group in spans.items():
        rows = await completions_of(tx, group, lo, hi)
        for user in group:
            found = History(rows[user], lo, hi, earliest.get(user))
            around, today = wanted[user]
            if history.fits(found, items, around, today):
                out[user] = (found, best[user])
            else:  # a long run: this user's window widens alone
                out[user] = await _widening(
                    tx, user, around, today, items, earliest.get(user), history.WINDOW * 4
                )
    return out


# -- a batch of completions: one load, one write ----------------------------------------------


class BatchState(msgspec.Struct):
    """What a batch of completions needs: its requests placed on their users' local days
    (admitted users only), the refused (request, the spelling that holds its user id), and
    the admitted users' histories."""

    placed: list[streaks.Placed]
    refused: list[tuple[streaks.Placed, str]]
    histories: streaks.Histories


async def load_batch(
    tx: Tx, asks: list[streaks.Ask], registry: UserRegistry, default_timezone: str, items: list[str]
) -> BatchState:
    """Everything a batch of completions reads, in `tx` under the users' locks (Route.locks):
    the users' time zones (which place each request on a local day), the user-id registry's
    admission (a new user is recorded with its first write), then the histories around the
    days in question. One statement per table, whatever the batch's size."""
    zones = await user_timezones(tx, sorted({a.user_id for a in asks}))
    placed = streaks.place(asks, zones, default_timezone)
    taken = await registry.admit(tx, [p.ask.user_id for p in placed], asks[0].now)
    refused = [(p, taken[p.ask.user_id]) for p in placed if p.ask.user_id in taken]
    admitted = [p for p in placed if p.ask.user_id not in taken]
    histories = await load_histories(tx, streaks.wanted(admitted), items) if admitted else {}
    return BatchState(admitted, refused, histories)


def write_batch(tx: Tx, result: streaks.Result) -> None:
    """Each kind of write for the whole batch in turn, so each is one statement at commit:
    the new completions, then the raised best streaks."""
    for d in result.done:
        defer_completion(tx, d.placed.ask.user_id, d.completion)
    for (user_id, code), best in result.raised.items():
        defer_raise_best(tx, user_id, code, best)


# -- a user's timeline day -----------------------------------------------------------------


class DayState(msgspec.Struct):
    """What a user's timeline of one day is built from."""

    tzname: str
    day: dt.date
    today: dt.date
    history: History
    best: dict[str, int]


async def load_day(
    tx: Tx,
    user_id: str,
    items: list[str],
    default_timezone: str,
    *,
    day: dt.date | None = None,
    now: dt.datetime | None = None,
    timezone: str | None = None,
) -> DayState:
    """The user's time zone (unless given: a change about to be written), the local `day`
    (default today), and the history around it."""
    tzname = timezone or await user_timezone(tx, user_id) or default_timezone
    today = days.local_day(now or dt.datetime.now(dt.UTC), days.zone(tzname))
    day = day or today
    found, best = await load_history(tx, user_id, day, today, items)
    return DayState(tzname, day, today, found, best)
