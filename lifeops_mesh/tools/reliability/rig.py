"""The mesh under test: a Mosquitto from broker/, Stats and LifeOps as real processes, their
databases (SQLite files, or a private PostgreSQL cluster that can be stopped)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from lifeops_mesh.broker import local_broker
from lifeops_mesh.processes import agent_process
from mesh import open_store
from mesh.broker.process import MosquittoProcess
from mesh.testing.postgres import PostgresServer, private_cluster, run_sync
from mesh.testing.processes import AgentProcess


class Rig:
    def __init__(
        self, work: Path, backend: str, stats_db: str, lifeops_db: str, pg: PostgresServer | None
    ) -> None:
        self.work = work
        self.backend = backend
        self.stats_db = stats_db
        self.lifeops_db = lifeops_db
        self.pg = pg
        self.broker: MosquittoProcess = local_broker(work / "broker")
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

    # -- what the databases say -------------------------------------------------------------

    async def stats_totals(self) -> dict[str, int]:
        async with open_store(self.stats_db) as store, store.transaction() as tx:
            rows = await tx.fetchall("SELECT user_id, total_xp FROM stats_characters")
        return {r[0]: int(r[1]) for r in rows}

    async def stats_refs(self) -> set[tuple[str, str]]:
        async with open_store(self.stats_db) as store, store.transaction() as tx:
            rows = await tx.fetchall("SELECT source, source_ref FROM stats_activities")
        return {(r[0], r[1]) for r in rows}

    async def receipts_pending(self) -> int:
        async with open_store(self.lifeops_db) as store, store.transaction() as tx:
            row = await tx.fetchone("SELECT COUNT(*) FROM mesh_receipts WHERE receipt_at IS NULL")
        return int(row[0]) if row else 0


@contextlib.asynccontextmanager
async def rig(backend: str, work: Path) -> AsyncIterator[Rig]:
    """A started rig; stopped (and a private PostgreSQL removed) when the block ends."""
    if backend == "sqlite":
        r = Rig(
            work,
            backend,
            f"sqlite:///{work / 'stats.db'}",
            f"sqlite:///{work / 'lifeops.db'}",
            None,
        )
        await r.start()
        try:
            yield r
        finally:
            await r.stop()
        return
    with private_cluster() as server:
        stats_db = run_sync(server.create_database())
        lifeops_db = run_sync(server.create_database())
        r = Rig(work, backend, stats_db, lifeops_db, server)
        await r.start()
        try:
            yield r
        finally:
            await r.stop()
