"""Database URLs in SQLAlchemy's form: sqlite:///relative.db, sqlite:////abs.db, postgresql://...

SQLite takes one option: `?synchronous=normal` trades durability for speed (a power cut may take
back the last commits, acknowledged ones included); the default, `full`, syncs every commit.
The benchmark uses it to print what durability costs."""

from __future__ import annotations

from typing import Literal

import msgspec

from mesh.errors import ConfigError
from mesh.store.base import Store


class DatabaseURL(msgspec.Struct, frozen=True):
    dialect: Literal["sqlite", "postgresql"]
    target: str  # the SQLite path, or an asyncpg DSN
    url: str
    synchronous: Literal["FULL", "NORMAL"] = "FULL"  # SQLite only


def parse_db_url(url: str) -> DatabaseURL:
    """The dialect and target of a database URL; ConfigError naming what is wrong."""
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        if rest in ("", "/", "/:memory:"):
            return DatabaseURL("sqlite", ":memory:", url)
        if not rest.startswith("/"):
            raise ConfigError(
                f"bad SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////abs.db"
            )
        path, _, query = rest[1:].partition("?")
        return DatabaseURL("sqlite", path, url, _synchronous(query, url))
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return DatabaseURL("postgresql", "postgresql://" + url[len(prefix) :], url)
    raise ConfigError(f"unsupported database URL {url!r}: use sqlite:///FILE or postgresql://...")


def _synchronous(query: str, url: str) -> Literal["FULL", "NORMAL"]:
    if not query:
        return "FULL"
    key, _, value = query.partition("=")
    if key != "synchronous" or value.lower() not in ("full", "normal"):
        raise ConfigError(f"bad SQLite URL {url!r}: the only option is ?synchronous=full|normal")
    return "FULL" if value.lower() == "full" else "NORMAL"


def open_store(url: str) -> Store:
    """A store for `url` (not yet opened)."""
    parsed = parse_db_url(url)
    if parsed.dialect == "sqlite":
        from mesh.store.sqlite import SqliteStore

        return SqliteStore(parsed.target, url, synchronous=parsed.synchronous)
    from mesh.store.postgres import PostgresStore

    return PostgresStore(parsed.target, url)
