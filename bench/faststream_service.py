"""FastStream's MQTT request/response doing the same work (SQLite insert and XP per request).

Run: `python bench/faststream_service.py URL DB`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

import aiosqlite
from faststream.mqtt import MQTTBroker, QoS

GRANTS = {"reading": {"INT": 30}}


async def main(url: str, db_path: str) -> None:
    # logger=None: no access-log line per message (our agents log warnings only, too)
    broker = MQTTBroker(url, client_id="bench-faststream", logger=None)
    conn = await aiosqlite.connect(db_path, isolation_level=None)
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute("PRAGMA synchronous=NORMAL")
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS activities (id TEXT PRIMARY KEY,"
        " user_id TEXT, source_ref TEXT UNIQUE, xp INTEGER)"
    )

    lock = asyncio.Lock()

    @broker.subscriber("bench/faststream", qos=QoS.AT_LEAST_ONCE)
    async def handle(body: dict[str, str]) -> dict[str, object]:
        grants = GRANTS.get(body.get("activity_type", ""), {})
        async with lock:
            await conn.execute("BEGIN IMMEDIATE")
            await conn.execute(
                "INSERT INTO activities VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (str(uuid.uuid4()), body["user_id"], body.get("source_ref"), sum(grants.values())),
            )
            await conn.execute("COMMIT")
        return {"success": True, "xp_granted": grants}

    async with broker:
        await broker.start()
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    _ = json
    asyncio.run(main(sys.argv[1], sys.argv[2]))
