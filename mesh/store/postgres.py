"""PostgreSQL backend on asyncpg: a pool, `?` placeholders rewritten to `$n`."""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import lru_cache
from typing import Any

import asyncpg

from mesh.errors import StoreError
from mesh.store.base import Row, Store, Tx
from mesh.store.errors import cause_of

_QMARK = re.compile(r"\?")


@lru_cache(maxsize=512)
def to_pg(sql: str) -> str:
    counter = itertools.count(1)
    return _QMARK.sub(lambda _m: f"${next(counter)}", sql)


class PostgresTx(Tx):
    def __init__(self, conn: asyncpg.Connection) -> None:
        super().__init__()
        self._conn = conn

    async def _run(self, sql: str, args: Sequence[Any]) -> int:
        status = await self._conn.execute(to_pg(sql), *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    async def _run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(to_pg(sql), rows)

    async def _fetchone(self, sql: str, args: Sequence[Any]) -> Row | None:
        row = await self._conn.fetchrow(to_pg(sql), *args)
        return tuple(row) if row is not None else None

    async def _fetchall(self, sql: str, args: Sequence[Any]) -> list[Row]:
        return [tuple(r) for r in await self._conn.fetch(to_pg(sql), *args)]

    @asynccontextmanager
    async def _savepoint(self) -> AsyncIterator[None]:
        async with self._conn.transaction():
            yield

    async def _lock(self, ids: list[int]) -> None:
        """Transaction-scoped advisory locks, one statement for all, in the array's order
        (unnest yields it element by element): released by the commit or the rollback, never
        a row written. A wait ends at the lock, a deadlock or the connection's command timeout."""
        await self._conn.execute(
            "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k", ids
        )


class PostgresStore(Store):
    dialect = "postgresql"

    def __init__(self, dsn: str, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self.dsn = dsn
        self.url = url
        self._min = min_size
        self._max = max_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._min,
                max_size=self._max,
                timeout=10,
                command_timeout=30,
                # Acknowledged means durable, whatever the server's default says.
                server_settings={"synchronous_commit": "on"},
            )
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}", "outage") from exc

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def read(self) -> AbstractAsyncContextManager[Tx]:
        return self._tx(readonly=True)

    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        return self._tx(readonly=False)

    @asynccontextmanager
    async def _tx(self, *, readonly: bool) -> AsyncIterator[Tx]:
        if self._pool is None:
            raise StoreError("store is not open")
        entered = False
        try:
            async with (
                self._pool.acquire(timeout=30) as conn,
                conn.transaction(readonly=readonly),
            ):
                tx = PostgresTx(conn)
                entered = True
                try:
                    yield tx
                    await tx.flush()
                except BaseException:
                    tx.discard()
                    raise
        except (
            OSError,
            TimeoutError,
            asyncpg.exceptions.PostgresConnectionError,
            asyncpg.exceptions.InterfaceError,
        ) as exc:
            # Getting a connection failed: an outage. Inside the block, only what the driver
            # says about the connection is (a handler's own OSError or a client-side DataError
            # is the handler's: it passes unchanged).
            if entered and cause_of(exc) != "outage":
                raise
            raise StoreError(f"PostgreSQL connection failed: {exc}", "outage") from exc

    async def _migration_lock(self, tx: Tx) -> None:
        await tx.fetchone("SELECT pg_advisory_xact_lock(7130)")
