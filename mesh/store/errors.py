"""Database failures by cause: what waits, what retries, what is a handler's own doing.

- outage     the database is unreachable, restarting, or refuses connections: wait for it,
             however long it takes, holding the messages un-acknowledged;
- exhausted  it is there but cannot take the write: disk full, out of memory or connections,
             read-only, a statement cancelled by an operator or a timeout, SQLite locked by
             another process past busy_timeout, a PostgreSQL lock_timeout: the same;
- conflict   deadlock or serialization failure between transactions: retry soon;
- None       anything else: the handler's own refusal or bug (final for that message).
"""

from __future__ import annotations

import sqlite3

import asyncpg

from mesh.errors import StoreCause as Cause
from mesh.errors import StoreError

_PG_OUTAGE = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
)
_PG_EXHAUSTED = (
    asyncpg.exceptions.InsufficientResourcesError,  # disk full, out of memory, connections
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.ConfigurationLimitExceededError,
    asyncpg.exceptions.LockNotAvailableError,
)
_PG_CONFLICT = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)
# "database is locked" comes after busy_timeout: another process holds the write lock (a
# backup, an sqlite3 shell) for as long as it likes, which is waited out like a full disk.
_SQLITE_EXHAUSTED = (
    "disk is full", "disk i/o", "readonly", "read-only", "out of memory", "locked", "busy"
)  # fmt: skip


def cause_of(exc: BaseException) -> Cause | None:
    """Why the database failed, or None when it was not the database's doing."""
    for e in _chain(exc):
        if isinstance(e, StoreError) and e.cause is not None:
            return e.cause
        if isinstance(e, (*_PG_OUTAGE, OSError, ConnectionError, TimeoutError)):
            return "outage"
        if isinstance(e, _PG_EXHAUSTED):
            return "exhausted"
        if isinstance(e, _PG_CONFLICT):
            return "conflict"
        if isinstance(e, sqlite3.OperationalError | sqlite3.DatabaseError):
            text = str(e).lower()
            if any(s in text for s in _SQLITE_EXHAUSTED):
                return "exhausted"
        if isinstance(e, StoreError):
            return "outage"
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen and len(out) < 8:
        out.append(e)
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return out


def is_connection_error(exc: BaseException) -> bool:
    """The database is unreachable or cannot take writes: wait for it."""
    return cause_of(exc) in ("outage", "exhausted")


def is_transient(exc: BaseException) -> bool:
    """Retrying the same work may succeed (outage, exhaustion, busy database, deadlock)."""
    return cause_of(exc) is not None
