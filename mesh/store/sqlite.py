"""SQLite backend: aiosqlite owns the connection, statements run inline.

aiosqlite opens the connection on its own thread and runs what can block there: opening, BEGIN
IMMEDIATE (which may wait for another writer up to busy_timeout) and COMMIT (WAL append, and a
checkpoint now and then). The statements in between are page-cache work of microseconds: they run
directly on the same sqlite3 connection from the event loop while the store's lock is held, so
nothing else touches the connection meanwhile. Measured on the Stats agent's ~14 statements per
message: one thread round trip per statement cost ~4x the throughput (see bench/).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from mesh.backoff import Backoff
from mesh.errors import StoreError
from mesh.store.base import Row, Store, Tx
from mesh.store.errors import cause_of

log = logging.getLogger("mesh.store")


class SqliteTx(Tx):
    def __init__(self, conn: sqlite3.Connection, *, writer: bool = True) -> None:
        super().__init__()
        self._conn = conn
        self._writer = writer
        self._sp = itertools.count()

    async def _lock(self, ids: list[int]) -> None:
        """Nothing to take: a write transaction begins IMMEDIATE, holding the database's one
        write lock against every other connection and process until it ends, so whatever it
        reads stays what it read. A read-only snapshot holds none: locking there is a bug."""
        if not self._writer:
            raise StoreError("Tx.lock in a read-only transaction: use store.transaction()")

    async def _run(self, sql: str, args: Sequence[Any]) -> int:
        return self._conn.execute(sql, args).rowcount

    async def _run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)

    async def _fetchone(self, sql: str, args: Sequence[Any]) -> Row | None:
        row = self._conn.execute(sql, args).fetchone()
        return tuple(row) if row is not None else None

    async def _fetchall(self, sql: str, args: Sequence[Any]) -> list[Row]:
        return [tuple(r) for r in self._conn.execute(sql, args).fetchall()]

    @asynccontextmanager
    async def _savepoint(self) -> AsyncIterator[None]:
        name = f"sp{next(self._sp)}"
        self._conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._conn.execute(f"ROLLBACK TO {name}")
            self._conn.execute(f"RELEASE {name}")
            raise
        self._conn.execute(f"RELEASE {name}")


class SqliteStore(Store):
    dialect = "sqlite"

    def __init__(self, path: str, url: str, *, synchronous: str = "FULL") -> None:
        self.path = path
        self.url = url
        self._synchronous = synchronous
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self, timeout: float = 30.0) -> None:
        """Connect and set the connection up. Two processes opening one new file at once (two
        instances on one SQLite file) can meet while one turns on WAL: SQLite answers "database
        is locked" at once there instead of waiting (no busy handler for that lock upgrade), so
        the setup is retried with jittered backoff until `timeout`."""
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        backoff = Backoff(0.05, 1.0)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                await self._connect()
                return
            except sqlite3.OperationalError as exc:
                await self.close()
                text = str(exc).lower()
                busy = "locked" in text or "busy" in text
                if not busy or asyncio.get_running_loop().time() > deadline:
                    raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
                await backoff.sleep()
            except sqlite3.Error as exc:
                await self.close()
                raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc

    async def _connect(self) -> None:
        self._conn = await aiosqlite.connect(
            self.path, isolation_level=None, check_same_thread=False
        )
        await self._conn.execute("PRAGMA busy_timeout=5000")
        # Private before the WAL exists: SQLite gives -wal and -shm the main file's mode.
        await asyncio.to_thread(make_private, self.path)
        await self._conn.execute("PRAGMA journal_mode=WAL")
        # Acknowledged means durable: FULL syncs the WAL at every commit (group commit pays
        # one fsync per batch; bench/run.py prints what it costs against NORMAL), so a
        # power cut cannot take back a commit whose messages were acknowledged.
        await self._conn.execute(f"PRAGMA synchronous={self._synchronous}")
        await self._conn.execute("PRAGMA foreign_keys=ON")
        # Checkpoint every ~40 MB of WAL instead of ~4 MB: in a grown database (a million
        # activities and inbox keys) each commit touches many index pages, and a longer
        # interval copies each page back once instead of over and over (measured: 76% ->
        # 86% of the empty database's throughput). The WAL file is kept under 64 MB.
        await self._conn.execute("PRAGMA wal_autocheckpoint=10000")
        await self._conn.execute("PRAGMA journal_size_limit=67108864")

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Tx]:
        """A deferred transaction that only reads: in WAL mode it never waits for a writer."""
        if self._conn is None:
            raise StoreError("store is not open")
        conn = self._conn
        async with self._lock:
            await _begin(conn, "BEGIN")
            try:
                yield SqliteTx(conn._conn, writer=False)
            finally:
                with contextlib.suppress(sqlite3.Error):
                    await asyncio.shield(conn.execute("ROLLBACK"))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        if self._conn is None:
            raise StoreError("store is not open")
        conn = self._conn
        async with self._lock:
            await _begin(conn, "BEGIN IMMEDIATE")
            tx = SqliteTx(conn._conn)  # the sqlite3 connection aiosqlite owns
            try:
                yield tx
                await tx.flush()
            except BaseException:
                tx.discard()
                try:
                    await asyncio.shield(conn.execute("ROLLBACK"))
                except sqlite3.Error:
                    pass
                raise
            try:
                await asyncio.shield(conn.execute("COMMIT"))
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):  # a failed COMMIT leaves it open
                    await asyncio.shield(conn.execute("ROLLBACK"))
                raise StoreError(f"commit failed: {exc}", cause_of(exc) or "outage") from exc


def make_private(path: str) -> None:
    """A database, its WAL and shared memory readable by their owner only (0600); a file of
    another owner (chmod refused) is left as it is, with a warning."""
    if path == ":memory:":
        return
    for name in (path, f"{path}-wal", f"{path}-shm"):
        try:
            os.chmod(name, 0o600)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot make %s private (0600): %s", name, exc)


async def _begin(conn: aiosqlite.Connection, statement: str) -> None:
    """BEGIN on aiosqlite's thread. A cancelled wait (a caller's timeout) does not stop the
    thread: BEGIN may still succeed there after the caller is gone, leaving the connection
    inside a transaction nobody ends. So a cancelled BEGIN is waited for and undone."""
    begin = asyncio.ensure_future(conn.execute(statement))
    try:
        await asyncio.shield(begin)
    except asyncio.CancelledError:
        await asyncio.shield(_undo(conn, begin))
        raise
    except sqlite3.Error as exc:
        cause = cause_of(exc) or "outage"
        raise StoreError(f"cannot begin transaction: {exc}", cause) from exc


async def _undo(conn: aiosqlite.Connection, begin: asyncio.Future[Any]) -> None:
    try:
        await begin
    except sqlite3.Error:
        return  # it failed: nothing to undo
    with contextlib.suppress(sqlite3.Error):
        await conn.execute("ROLLBACK")
