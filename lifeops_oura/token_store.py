"""Oura OAuth tokens in LifeOps' own store, and their refresh, one at a time per user.

Tables (created by the LifeOps agent's migration 4, statements below):

- `lifeops_oura_tokens`: per logged-in user the access token, the refresh token, the access
  token's expiry, a generation counted up at every refresh, and `login_needed` (why the user
  must log in again, once Oura refused the refresh token);
- `lifeops_oura_sync`: per user the last successful sync and the last failure (for
  `lifeops-mesh oura status`).

Refresh (`OAuthTokens.renew`): in one write transaction, the user's row is locked
(PostgreSQL: `SELECT ... FOR UPDATE`; SQLite: the transaction is `BEGIN IMMEDIATE`, the
database's write lock), read again (another instance may have refreshed meanwhile: its token is
used, no second refresh), the refresh token sent to Oura, and the new pair written; the lock is
released by the commit. So the old refresh token, which Oura has just invalidated, is never sent
again, from this or any other instance sharing the store. The token request is bounded by the
OAuth timeout, so the lock is too.

A crash between Oura's answer and the commit: the new pair was only ever in memory, and Oura
has already invalidated the stored refresh token, so nothing can bring it back (no
persist-before-use is possible: Oura, not LifeOps, makes the new pair). The next refresh sends
the stored token, Oura answers `invalid_grant`, the row is marked `login_needed`, one line asks
for `lifeops-mesh oura login`, and no request is sent for that user until they have logged in.
A commit that fails without a crash (the database briefly away) keeps the new pair in memory
and stores it at the next attempt, instead of refreshing with the dead token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

import httpx
import msgspec

from lifeops_oura.oauth import OAuthConfig, OuraLoginNeeded, TokenSet, refresh
from lifeops_oura.tokens import Token
from mesh import Store, Tx

TABLES = (
    "CREATE TABLE IF NOT EXISTS lifeops_oura_tokens ("
    " user_id TEXT PRIMARY KEY, access_token TEXT NOT NULL, refresh_token TEXT NOT NULL,"
    " expires_at TEXT NOT NULL, generation INTEGER NOT NULL, login_needed TEXT,"
    " updated_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS lifeops_oura_sync ("
    " user_id TEXT PRIMARY KEY, last_sync_at TEXT, last_error TEXT, last_error_at TEXT)",
)


class StoredTokens(msgspec.Struct, frozen=True):
    access: str
    refresh: str
    expires_at: dt.datetime
    generation: int
    login_needed: str | None

    def __repr__(self) -> str:
        return f"StoredTokens(generation={self.generation}, expires_at={self.expires_at})"


class SyncRecord(msgspec.Struct, frozen=True):
    user_id: str
    last_sync_at: dt.datetime | None
    last_error: str | None
    last_error_at: dt.datetime | None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


_SELECT = (
    "SELECT access_token, refresh_token, expires_at, generation, login_needed"
    " FROM lifeops_oura_tokens WHERE user_id = ?"
)


async def load(tx: Tx, user_id: str, *, lock: bool = False) -> StoredTokens | None:
    """The user's tokens; `lock`: on PostgreSQL the row is locked until the transaction ends
    (SQLite's write transaction already excludes every other writer)."""
    row = await tx.fetchone(_SELECT + (" FOR UPDATE" if lock else ""), user_id)
    if row is None:
        return None
    return StoredTokens(
        row[0], row[1], dt.datetime.fromisoformat(row[2]), int(row[3]), row[4] or None
    )


async def save(tx: Tx, user_id: str, tokens: TokenSet, generation: int) -> None:
    await tx.execute(
        "INSERT INTO lifeops_oura_tokens (user_id, access_token, refresh_token, expires_at,"
        " generation, login_needed, updated_at) VALUES (?, ?, ?, ?, ?, NULL, ?)"
        " ON CONFLICT (user_id) DO UPDATE SET access_token = excluded.access_token,"
        " refresh_token = excluded.refresh_token, expires_at = excluded.expires_at,"
        " generation = excluded.generation, login_needed = NULL,"
        " updated_at = excluded.updated_at",
        user_id,
        tokens.access.reveal(),
        tokens.refresh.reveal(),
        tokens.expires_at.isoformat(),
        generation,
        _now().isoformat(),
    )


async def mark_login_needed(tx: Tx, user_id: str, why: str) -> None:
    await tx.execute(
        "UPDATE lifeops_oura_tokens SET login_needed = ?, updated_at = ? WHERE user_id = ?",
        why,
        _now().isoformat(),
        user_id,
    )


async def forget(tx: Tx, user_id: str) -> bool:
    return await tx.execute("DELETE FROM lifeops_oura_tokens WHERE user_id = ?", user_id) > 0


async def users(tx: Tx) -> list[str]:
    rows = await tx.fetchall("SELECT user_id FROM lifeops_oura_tokens ORDER BY user_id")
    return [str(r[0]) for r in rows]


async def record_sync(tx: Tx, user_id: str, error: str | None) -> None:
    """A sync's outcome: a success sets last_sync_at and clears the error."""
    now = _now().isoformat()
    if error is None:
        await tx.execute(
            "INSERT INTO lifeops_oura_sync (user_id, last_sync_at) VALUES (?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET last_sync_at = excluded.last_sync_at,"
            " last_error = NULL, last_error_at = NULL",
            user_id,
            now,
        )
    else:
        await tx.execute(
            "INSERT INTO lifeops_oura_sync (user_id, last_error, last_error_at) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET last_error = excluded.last_error,"
            " last_error_at = excluded.last_error_at",
            user_id,
            error,
            now,
        )


async def sync_records(tx: Tx) -> dict[str, SyncRecord]:
    rows = await tx.fetchall(
        "SELECT user_id, last_sync_at, last_error, last_error_at FROM lifeops_oura_sync"
    )
    out = {}
    for r in rows:
        out[str(r[0])] = SyncRecord(
            str(r[0]),
            dt.datetime.fromisoformat(r[1]) if r[1] else None,
            r[2],
            dt.datetime.fromisoformat(r[3]) if r[3] else None,
        )
    return out


class OAuthTokens:
    """Access tokens of the users who logged in, refreshed before they expire (`margin_s`
    ahead) and when the API refuses one, each user's refreshes one at a time."""

    def __init__(
        self,
        store: Store,
        config: OAuthConfig,
        *,
        margin_s: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], dt.datetime] = _now,
    ) -> None:
        self.store = store
        self.config = config
        self.margin = dt.timedelta(seconds=margin_s)
        self._transport = transport
        self._clock = clock
        self._local: dict[str, asyncio.Lock] = {}
        # user -> (generation refreshed from, the new pair) not committed yet
        self._unsaved: dict[str, tuple[int, TokenSet]] = {}
        self.refreshes = 0  # token requests sent

    async def users(self) -> list[str]:
        async with self.store.read() as tx:
            return await users(tx)

    async def access(self, user_id: str) -> Token | None:
        """A usable access token, refreshed first when it expires within the margin; None
        when the user never logged in (OuraLoginNeeded when they must again)."""
        async with self.store.read() as tx:
            row = await load(tx, user_id)
        if row is None:
            return None
        if row.login_needed:
            raise OuraLoginNeeded(user_id, row.login_needed)
        if row.expires_at - self.margin > self._clock() and user_id not in self._unsaved:
            return Token(row.access)
        return await self.renew(user_id, None)

    async def renew(self, user_id: str, stale: Token | None) -> Token:
        """A new access token: `stale` is the one the API refused (None: it is expiring).
        When another instance refreshed meanwhile, its token is taken instead."""
        lock = self._local.setdefault(user_id, asyncio.Lock())
        async with lock:
            failure: OuraLoginNeeded | None = None
            async with self.store.transaction() as tx:
                row = await load(tx, user_id, lock=self.store.dialect == "postgresql")
                if row is None:
                    raise OuraLoginNeeded(user_id, "logged out")
                if row.login_needed:
                    raise OuraLoginNeeded(user_id, row.login_needed)
                if self._still_good(user_id, row, stale):
                    return Token(row.access)
                try:
                    fresh = await self._fresh_pair(user_id, row)
                except OuraLoginNeeded as exc:
                    failure = exc
                    await mark_login_needed(tx, user_id, exc.why)
                else:
                    await save(tx, user_id, fresh, row.generation + 1)
            if failure is not None:
                raise failure
            self._unsaved.pop(user_id, None)
            return fresh.access

    def _still_good(self, user_id: str, row: StoredTokens, stale: Token | None) -> bool:
        if user_id in self._unsaved:
            return False
        if stale is not None:
            return row.access != stale.reveal()  # refreshed since the refused request
        return row.expires_at - self.margin > self._clock()

    async def _fresh_pair(self, user_id: str, row: StoredTokens) -> TokenSet:
        pending = self._unsaved.get(user_id)
        if pending is not None and pending[0] == row.generation:
            return pending[1]  # refreshed before, but the commit failed: store it now
        self._unsaved.pop(user_id, None)
        self.refreshes += 1
        async with asyncio.timeout(self.config.timeout_s * 2):
            fresh = await refresh(self.config, user_id, Token(row.refresh), self._transport)
        self._unsaved[user_id] = (row.generation, fresh)
        return fresh
