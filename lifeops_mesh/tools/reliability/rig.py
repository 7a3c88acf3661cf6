"""The mesh under test: a Mosquitto from broker/ saving its snapshot every few seconds, Stats
and LifeOps as real processes, their databases (SQLite files, or a private PostgreSQL cluster
that can be stopped), the Stats database on a small disk of its own where one can be mounted."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from lifeops_mesh.broker import local_broker
from lifeops_mesh.processes import agent_process
from lifeops_mesh.tools.reliability.disk import SmallDisk, small_disk
from lifeops_mesh.tools.reliability.observe import achievement_id
from mesh import open_store
from mesh.broker.process import MosquittoProcess
from mesh.testing.postgres import PostgresServer, private_cluster
from mesh.testing.processes import AgentProcess

AUTOSAVE_S = 5  # Mosquitto writes its snapshot this often (the project's config: 10)


class Rig:
    def __init__(
        self,
        work: Path,
        backend: str,
        stats_db: str,
        lifeops_db: str,
        pg: PostgresServer | None,
        disk: SmallDisk | None,
    ) -> None:
        self.work = work
        self.backend = backend
        self.stats_db = stats_db
        self.lifeops_db = lifeops_db
        self.pg = pg
        self.disk = disk  # where the Stats database lives, when it has a disk of its own
        self.broker: MosquittoProcess = local_broker(
            work / "broker", overrides={"autosave_interval": str(AUTOSAVE_S)}
        )
        self.broker.prepare()  # accounts and config exist before anything connects
        self.stats = self._agent("stats", stats_db)
        self.lifeops = self._agent("lifeops", lifeops_db)

    def _agent(self, name: str, db: str) -> AgentProcess:
        return agent_process(
            name,
            self.broker.url(name),
            db,
            data_dir=self.work,
            instance="rel",
            log_file=self.work / f"{name}.log",
        )

    async def start(self) -> None:
        await asyncio.to_thread(self.broker.start)
        await asyncio.to_thread(self.stats.start)
        await asyncio.to_thread(self.lifeops.start)

    async def stop(self) -> None:
        await asyncio.to_thread(self.lifeops.stop)
        await asyncio.to_thread(self.stats.stop)
        await asyncio.to_thread(self.broker.stop)

    @property
    def tester_url(self) -> str:
        return self.broker.url("tester")

    # -- faults on the database ---------------------------------------------------------------

    async def lock_stats_database(self, seconds: float) -> None:
        """Another client holds the lock Stats needs: SQLite's write lock, or on PostgreSQL an
        exclusive lock on the characters table, for `seconds`."""
        if self.backend == "sqlite":
            path = self.stats_db.removeprefix("sqlite:///")
            await asyncio.to_thread(_hold_sqlite_lock, path, seconds)
            return
        conn = await asyncpg.connect(self.stats_db, timeout=10)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE stats_characters IN ACCESS EXCLUSIVE MODE")
                await asyncio.sleep(seconds)
        finally:
            await conn.close()

    # -- what the databases say ---------------------------------------------------------------

    async def stats_totals(self) -> dict[str, int]:
        async with open_store(self.stats_db) as store, store.read() as tx:
            rows = await tx.fetchall("SELECT user_id, total_xp FROM stats_characters")
        return {r[0]: int(r[1]) for r in rows}

    async def stats_refs(self) -> set[tuple[str, str]]:
        async with open_store(self.stats_db) as store, store.read() as tx:
            rows = await tx.fetchall(
                "SELECT source, source_ref FROM stats_activities WHERE source_ref IS NOT NULL"
            )
        return {(r[0], r[1]) for r in rows}

    async def receipts_pending(self) -> int:
        async with open_store(self.lifeops_db) as store, store.read() as tx:
            row = await tx.fetchone("SELECT COUNT(*) FROM mesh_receipts WHERE receipt_at IS NULL")
        return int(row[0]) if row else 0

    async def committed_events(self) -> set[str]:
        """The level-ups and achievements Stats committed (ids as the events carry them)."""
        async with open_store(self.stats_db) as store, store.read() as tx:
            ups = await tx.fetchall("SELECT event_id FROM stats_levelups")
            achs = await tx.fetchall("SELECT user_id, code FROM stats_achievements")
        return {r[0] for r in ups} | {achievement_id(r[0], r[1]) for r in achs}

    async def committed_states(self) -> dict[str, bytes]:
        """Every retained state topic Stats and LifeOps committed, with its payload."""
        out: dict[str, bytes] = {}
        for db in (self.stats_db, self.lifeops_db):
            async with open_store(db) as store, store.read() as tx:
                rows = await tx.fetchall("SELECT topic, payload FROM mesh_state")
            out.update({r[0]: r[1].encode("utf-8") for r in rows})
        return out


def _hold_sqlite_lock(path: str, seconds: float) -> None:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        conn.execute("ROLLBACK")
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def rig(backend: str, work: Path) -> AsyncIterator[Rig]:
    """A started rig; stopped (a private PostgreSQL and the small disk removed) at the end."""
    with small_disk() as disk:
        if backend == "sqlite":
            where = disk.directory("sqlite") if disk else work
            r = Rig(
                work,
                backend,
                f"sqlite:///{where / 'stats.db'}",
                f"sqlite:///{work / 'lifeops.db'}",
                None,
                disk,
            )
            async with _started(r):
                yield r
            return
        with private_cluster() as server:
            tablespace = None
            if disk is not None:  # Stats' tables on the small disk, the WAL stays where it is
                location = disk.directory("pg", owner="postgres")
                conn = await asyncpg.connect(server.admin_url, timeout=10)
                try:
                    await conn.execute(f"CREATE TABLESPACE lifeops_stats LOCATION '{location}'")
                finally:
                    await conn.close()
                tablespace = "lifeops_stats"
            stats_db = await server.create_database(tablespace)
            lifeops_db = await server.create_database()
            r = Rig(work, backend, stats_db, lifeops_db, server, disk)
            async with _started(r):
                yield r


@contextlib.asynccontextmanager
async def _started(r: Rig) -> AsyncIterator[None]:
    await r.start()
    try:
        yield
    finally:
        if r.disk is not None:
            r.disk.free()
        await r.stop()
