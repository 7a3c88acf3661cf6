"""Database failures by cause: what waits, what retries, what is a handler's own doing.

- outage     the database is unreachable, restarting, or refuses connections: wait for it,
             however long it takes, holding the messages un-acknowledged;
- exhausted  it is there but cannot take the write: disk full, out of memory or connections,
             read-only, a statement cancelled by an operator or a timeout, SQLite locked by
             another process past busy_timeout, a PostgreSQL lock_timeout: the same;
- conflict   deadlock or serialization failure between transactions: retry soon;
- None       anything else: the handler's own refusal or bug (final for that message).

Only the exception itself and its explicit `__cause__` (a driver or the store wrapping what it
caught: `raise StoreError(...) from exc`) are looked at, never the implicit `__context__`: a
handler's KeyError raised while it handled an OSError is the handler's bug, not an outage.
Only what a driver says about the connection or the server's state counts: asyncpg's
client-side DataError (a wrong argument type) or "another operation is in progress" is a bug.
A message that keeps failing with a transient cause while the database answers other queries
is caught by the committer's poison-message bound (mesh.inbox), not here.
"""

from __future__ import annotations

import errno
import socket
import sqlite3

import asyncpg

from mesh.errors import StoreCause as Cause
from mesh.errors import StoreError

# SQLSTATE classes and codes, by cause: 08 connection, 57P operator intervention (admin or
# crash shutdown, cannot connect now), 53 insufficient resources (disk full, out of memory,
# too many connections), 25006 read-only transaction, 57014 query cancelled (statement
# timeout), 55P03 lock not available (lock_timeout), 40001 serialization, 40P01 deadlock.
_PG_OUTAGE_CLASSES = ("08", "57P")
_PG_EXHAUSTED_CLASSES = ("53",)
_PG_EXHAUSTED_CODES = ("25006", "57014", "55P03")
_PG_CONFLICT_CODES = ("40001", "40P01")
# asyncpg's own client-side words for a connection that is gone.
_PG_CLOSED = ("connection is closed", "connection was closed", "pool is closing")
_OS_OUTAGE = frozenset(
    {
        errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE,
        errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN, errno.ETIMEDOUT,
    }
)  # fmt: skip
_OS_EXHAUSTED = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENOMEM})
# "database is locked" comes after busy_timeout: another process holds the write lock (a
# backup, an sqlite3 shell) for as long as it likes, which is waited out like a full disk.
_SQLITE_EXHAUSTED = (
    "disk is full", "disk i/o", "readonly", "read-only", "out of memory", "locked", "busy"
)  # fmt: skip


def cause_of(exc: BaseException) -> Cause | None:
    """Why the database failed, or None when it was not the database's doing."""
    for e in (exc, exc.__cause__):
        if e is None:
            continue
        cause = _own_cause(e)
        if cause is not None:
            return cause
    return None


def _own_cause(e: BaseException) -> Cause | None:
    if isinstance(e, StoreError):
        return e.cause or "outage"  # the store's own: not open, cannot connect
    if isinstance(e, asyncpg.PostgresError):
        return _sqlstate_cause(str(getattr(e, "sqlstate", "") or ""))
    if isinstance(e, asyncpg.InterfaceError):
        text = str(e).lower()
        return "outage" if any(s in text for s in _PG_CLOSED) else None
    if isinstance(e, sqlite3.OperationalError | sqlite3.DatabaseError):
        text = str(e).lower()
        return "exhausted" if any(s in text for s in _SQLITE_EXHAUSTED) else None
    if isinstance(e, TimeoutError | ConnectionError | socket.gaierror):
        return "outage"  # a timeout is the driver's (command_timeout, pool acquire)
    if isinstance(e, OSError):
        if e.errno in _OS_OUTAGE:
            return "outage"
        if e.errno in _OS_EXHAUSTED:
            return "exhausted"
    return None


def _sqlstate_cause(code: str) -> Cause | None:
    if code.startswith(_PG_OUTAGE_CLASSES):
        return "outage"
    if code.startswith(_PG_EXHAUSTED_CLASSES) or code in _PG_EXHAUSTED_CODES:
        return "exhausted"
    if code in _PG_CONFLICT_CODES:
        return "conflict"
    return None


def states_server_condition(exc: BaseException) -> bool:
    """The error itself says the server cannot take this write now: disk full, out of memory or
    connections, read-only, shutting down, SQLite locked or busy. A probe write that goes through
    does not disprove it (an UPDATE in place fits where a new row does not), so such a failure is
    waited out, never blamed on the message (no poison verdict)."""
    for e in (exc, exc.__cause__):
        if isinstance(e, asyncpg.PostgresError):
            code = str(getattr(e, "sqlstate", "") or "")
            if code.startswith(("53", "57P")) or code == "25006":
                return True
        elif isinstance(e, sqlite3.OperationalError | sqlite3.DatabaseError):
            if any(s in str(e).lower() for s in _SQLITE_EXHAUSTED):
                return True
        elif isinstance(e, OSError) and e.errno in _OS_EXHAUSTED:
            return True
    return False


def is_connection_error(exc: BaseException) -> bool:
    """The database is unreachable or cannot take writes: wait for it."""
    return cause_of(exc) in ("outage", "exhausted")


def is_transient(exc: BaseException) -> bool:
    """Retrying the same work may succeed (outage, exhaustion, busy database, deadlock)."""
    return cause_of(exc) is not None
