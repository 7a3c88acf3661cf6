"""Which database failures are worth retrying (outage, lock, deadlock) and which are not."""

from __future__ import annotations

import sqlite3

import asyncpg

from mesh.errors import StoreError

_PG_RETRYABLE = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
)


def is_connection_error(exc: BaseException) -> bool:
    """The database is unreachable: wait for it, however long it takes."""
    return isinstance(
        exc,
        StoreError
        | OSError
        | TimeoutError
        | asyncpg.exceptions.InternalClientError
        | ConnectionError
        | asyncpg.exceptions.PostgresConnectionError
        | asyncpg.exceptions.InterfaceError
        | asyncpg.exceptions.CannotConnectNowError
        | asyncpg.exceptions.AdminShutdownError,
    )


def is_transient(exc: BaseException) -> bool:
    """Retrying the same work may succeed (outage, busy database, deadlock)."""
    if is_connection_error(exc) or isinstance(exc, _PG_RETRYABLE):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return "locked" in text or "busy" in text or "disk i/o" in text
    return False
