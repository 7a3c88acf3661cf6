"""The seed's HTTP design: a FastAPI service with POST /activities writing to SQLite.

Same work per request as the Stats agent's core: decode and validate, dedup by (source,
source_ref), insert the activity, add XP to the character, answer with the granted XP; one
transaction per request, as the seed does. Run: `python bench/http_service.py DB PORT`.
"""

from __future__ import annotations

import asyncio
import sys
import uuid

import aiosqlite
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

GRANTS = {"reading": {"INT": 30}, "gym_session": {"STR": 50, "STA": 20}}


class ActivityIn(BaseModel):
    user_id: str
    activity_type: str
    source: str = "manual"
    source_ref: str | None = None


def build(db_path: str) -> FastAPI:
    app = FastAPI()
    state: dict[str, aiosqlite.Connection] = {}
    lock = asyncio.Lock()  # one connection: one transaction at a time

    @app.on_event("startup")
    async def open_db() -> None:
        conn = await aiosqlite.connect(db_path, isolation_level=None)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS activities (id TEXT PRIMARY KEY,"
            " user_id TEXT, source TEXT, source_ref TEXT, xp INTEGER,"
            " UNIQUE (source, source_ref))"
        )
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS characters (user_id TEXT PRIMARY KEY,"
            " total_xp INTEGER NOT NULL)"
        )
        state["db"] = conn

    @app.post("/activities")
    async def log_activity(body: ActivityIn) -> dict[str, object]:
        grants = GRANTS.get(body.activity_type)
        if grants is None:
            return {"success": False, "error": "unknown activity_type"}
        db = state["db"]
        xp = sum(grants.values())
        async with lock:
            return await _tx(db, body, grants, xp)

    async def _tx(
        db: aiosqlite.Connection, body: ActivityIn, grants: dict[str, int], xp: int
    ) -> dict[str, object]:
        await db.execute("BEGIN IMMEDIATE")
        try:
            cur = await db.execute(
                "INSERT INTO activities VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (str(uuid.uuid4()), body.user_id, body.source, body.source_ref, xp),
            )
            if cur.rowcount == 1:
                await db.execute(
                    "INSERT INTO characters VALUES (?, ?) ON CONFLICT (user_id)"
                    " DO UPDATE SET total_xp = total_xp + excluded.total_xp",
                    (body.user_id, xp),
                )
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        return {
            "success": True,
            "xp_granted": grants,
            "message": "Gained XP: " + ", ".join(f"{k}+{v}" for k, v in grants.items()),
        }

    return app


if __name__ == "__main__":
    uvicorn.run(
        build(sys.argv[1]),
        host="127.0.0.1",
        port=int(sys.argv[2]),
        log_level="warning",
        access_log=False,
    )
