"""Growth and soak for the benchmark: a Stats database with 100,000 users and 1,000,000 stored
activities (seeded directly, as if the mesh had run for years), and a long run that samples the
agent's memory."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from pathlib import Path

from mesh import RUNTIME_MIGRATIONS, open_store
from stats_agent.repository import MIGRATIONS as STATS_MIGRATIONS

STATS = ("STR", "STA", "DEX", "INT", "WIS", "CHA")


async def _migrate(url: str) -> None:
    store = open_store(url)
    await store.open()
    try:
        for component, migrations in RUNTIME_MIGRATIONS.items():
            await store.migrate(component, migrations)
        await store.migrate("stats", STATS_MIGRATIONS)
    finally:
        await store.close()


def seed_sqlite(path: Path, users: int, activities: int) -> float:
    """Fill a Stats SQLite database; returns the seconds it took. Users are u0..u<users-1>,
    each with activities spread evenly, their XP, stats, an achievement and inbox keys."""
    t0 = time.perf_counter()
    asyncio.run(_migrate(f"sqlite:///{path}"))
    per_user = activities // users
    now = "2026-01-01T00:00:00+00:00"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    with db:
        db.executemany(
            "INSERT INTO stats_characters (user_id, total_xp, activities, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?)",
            ((f"u{u}", 30 * per_user, per_user, now, now) for u in range(users)),
        )
        db.executemany(
            "INSERT INTO stats_stat_xp (user_id, stat, xp) VALUES (?, ?, ?)",
            ((f"u{u}", s, 30 * per_user if s == "INT" else 0) for u in range(users) for s in STATS),
        )
        db.executemany(
            "INSERT INTO stats_achievements (user_id, code, title, activity_id, awarded_at)"
            " VALUES (?, 'first_activity', 'First steps', ?, ?)",
            ((f"u{u}", f"seed-{u}-0", now) for u in range(users)),
        )
    reply = '{"success":true,"xp_granted":{"INT":30}}'
    batch = 100_000
    for start in range(0, activities, batch):
        rows = range(start, min(start + batch, activities))
        with db:
            db.executemany(
                "INSERT INTO stats_activities (activity_id, user_id, activity_type, source,"
                " source_ref, activity_time, xp, reply, created_at)"
                " VALUES (?, ?, 'reading', 'manual', ?, ?, '{\"INT\":30}', ?, ?)",
                (
                    (
                        f"seed-{i % users}-{i // users}",
                        f"u{i % users}",
                        f"seed-{i}",
                        now,
                        reply,
                        now,
                    )
                    for i in rows
                ),
            )
            db.executemany(
                "INSERT INTO mesh_inbox (key, topic_key, reply, created_at)"
                " VALUES (?, 'activities_log', ?, ?)",
                ((f"activity:manual:seed-{i}", reply, now) for i in rows),
            )
    db.execute("ANALYZE")
    db.close()
    return time.perf_counter() - t0


def new_run_id() -> str:
    return uuid.uuid4().hex[:6]
