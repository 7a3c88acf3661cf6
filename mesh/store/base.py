"""The store interface every backend implements; SQL is written once with `?` placeholders."""

from __future__ import annotations

import abc
import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal

import msgspec

Dialect = Literal["sqlite", "postgresql"]
Row = tuple[Any, ...]


class Migration(msgspec.Struct, frozen=True):
    """One schema step; `postgresql` overrides `sql` where the dialects differ."""

    version: int
    sql: tuple[str, ...]
    postgresql: tuple[str, ...] | None = None

    def statements(self, dialect: Dialect) -> tuple[str, ...]:
        if dialect == "postgresql" and self.postgresql is not None:
            return self.postgresql
        return self.sql


class Tx(abc.ABC):
    """One open transaction.

    `defer(sql, *args)` queues a write whose row count nobody needs; consecutive deferred
    writes of the same statement go to the database as one `executemany` just before the next
    other statement, savepoint or commit. So the order of effects is the order of the calls
    (a read sees every write before it), and a batch that reads first and writes after costs
    one round trip per table instead of one per row."""

    def __init__(self) -> None:
        self._pending: list[tuple[str, list[Sequence[Any]]]] = []

    def defer(self, sql: str, *args: Any) -> None:
        if self._pending and self._pending[-1][0] == sql:
            self._pending[-1][1].append(args)
        else:
            self._pending.append((sql, [args]))

    async def flush(self) -> None:
        """Send what was deferred (the runtime calls it before commits and savepoints)."""
        while self._pending:
            sql, rows = self._pending.pop(0)
            if len(rows) == 1:
                await self._run(sql, rows[0])
            else:
                await self._run_many(sql, rows)

    def discard(self) -> None:
        """Forget what was deferred (its transaction or savepoint is being rolled back)."""
        self._pending.clear()

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; returns the number of rows it changed where the backend knows."""
        await self.flush()
        return await self._run(sql, args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self.flush()
        await self._run_many(sql, rows)

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        await self.flush()
        return await self._fetchone(sql, args)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        await self.flush()
        return await self._fetchall(sql, args)

    async def lock(self, keys: Iterable[str]) -> None:
        """Serialise this write transaction with every other one that locks any of `keys`,
        until it ends (commit or rollback): whoever locks a key second waits, then reads what
        the first one committed. For a read followed by the write that follows from it (what
        an Oura day already got, a character's totals before an award), on any number of
        agents sharing the database. Keys are taken in one order (see `lock_ids`), so two
        transactions locking overlapping keys cannot deadlock on them. Take them before the
        reads they protect, as early in the transaction as possible."""
        ids = lock_ids(keys)
        if ids:
            await self.flush()
            await self._lock(ids)

    @abc.abstractmethod
    async def _lock(self, ids: list[int]) -> None:
        """Take the locks `ids` (sorted) until the transaction ends (nothing to take where a
        write transaction already excludes every other writer)."""

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A nested transaction: rolled back alone when its block raises (with what it
        deferred)."""
        await self.flush()
        async with self._savepoint():
            try:
                yield
                await self.flush()
            except BaseException:
                self.discard()
                raise

    # -- what a backend implements ---------------------------------------------------------------

    @abc.abstractmethod
    async def _run(self, sql: str, args: Sequence[Any]) -> int: ...

    @abc.abstractmethod
    async def _run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    @abc.abstractmethod
    async def _fetchone(self, sql: str, args: Sequence[Any]) -> Row | None: ...

    @abc.abstractmethod
    async def _fetchall(self, sql: str, args: Sequence[Any]) -> list[Row]: ...

    @abc.abstractmethod
    def _savepoint(self) -> AbstractAsyncContextManager[None]: ...


def lock_ids(keys: Iterable[str]) -> list[int]:
    """Each distinct key as a signed 64-bit number (PostgreSQL's advisory lock space), sorted:
    every agent takes them in the same order. Two keys sharing a number (2^-64) only wait for
    each other more than they need to."""
    ids = {
        int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "big", signed=True)
        for k in keys
    }
    return sorted(ids)


class Store(abc.ABC):
    """A database backend (SQLite or PostgreSQL): open, migrate, transactions."""

    dialect: Dialect
    url: str

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """Commit when the block ends, roll back when it raises."""

    def read(self) -> AbstractAsyncContextManager[Tx]:
        """A read-only snapshot: takes no write lock, so a reader never waits for a writer
        (another process holding SQLite's lock, a full disk) and writes nothing."""
        return self.transaction()

    async def ping(self) -> None:
        async with self.read() as tx:
            await tx.fetchone("SELECT 1")

    async def writable(self, timeout: float = 5.0) -> bool:
        """Whether the database takes a write now: a probe that rewrites one row of
        schema_migrations (refused when it is away, read-only, full or locked). A message that
        keeps failing while this answers fails on its own (a poison message)."""
        try:
            async with asyncio.timeout(timeout), self.transaction() as tx:
                await tx.execute(
                    "UPDATE schema_migrations SET version = version"
                    " WHERE component = ? AND version = 1",
                    "mesh_inbox",
                )
            return True
        except Exception:
            return False

    async def migrate(self, component: str, migrations: Sequence[Migration]) -> int:
        """Apply the migrations of `component` not applied yet; returns the schema version."""
        async with self.transaction() as tx:
            await self._migration_lock(tx)
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " component TEXT NOT NULL, version INTEGER NOT NULL,"
                " PRIMARY KEY (component, version))"
            )
        version = 0
        for m in sorted(migrations, key=lambda m: m.version):
            async with self.transaction() as tx:
                await self._migration_lock(tx)
                done = await tx.fetchone(
                    "SELECT 1 FROM schema_migrations WHERE component = ? AND version = ?",
                    component,
                    m.version,
                )
                if done is None:
                    for stmt in m.statements(self.dialect):
                        await tx.execute(stmt)
                    await tx.execute(
                        "INSERT INTO schema_migrations (component, version) VALUES (?, ?)"
                        " ON CONFLICT DO NOTHING",
                        component,
                        m.version,
                    )
            version = m.version
        return version

    async def backlog(self, table: str, waiting: str) -> tuple[int, float]:
        """(rows matching `waiting` in `table`, age in seconds of the oldest by created_at)."""
        async with self.read() as tx:
            row = await tx.fetchone(
                f"SELECT COUNT(*), MIN(created_at) FROM {table} WHERE {waiting}"
            )
        count, oldest = row or (0, None)
        if not count or oldest is None:
            return 0, 0.0
        age = dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(oldest)
        return int(count), max(0.0, age.total_seconds())

    async def _migration_lock(self, tx: Tx) -> None:  # noqa: B027 - optional hook
        """Serialise migrations of agents sharing one database (no-op where one writer exists)."""

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
