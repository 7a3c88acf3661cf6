"""Database URLs in SQLAlchemy's form: sqlite:///relative.db, sqlite:////abs.db, postgresql://..."""

from __future__ import annotations

from typing import Literal

import msgspec

from mesh.errors import ConfigError
from mesh.store.base import Store


class DatabaseURL(msgspec.Struct, frozen=True):
    dialect: Literal["sqlite", "postgresql"]
    target: str  # the SQLite path, or an asyncpg DSN
    url: str


def parse_db_url(url: str) -> DatabaseURL:
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        if rest in ("", "/", "/:memory:"):
            return DatabaseURL("sqlite", ":memory:", url)
        if not rest.startswith("/"):
            raise ConfigError(
                f"bad SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////abs.db"
            )
        return DatabaseURL("sqlite", rest[1:], url)
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return DatabaseURL("postgresql", "postgresql://" + url[len(prefix) :], url)
    raise ConfigError(f"unsupported database URL {url!r}: use sqlite:///FILE or postgresql://...")


def open_store(url: str) -> Store:
    """A store for `url` (not yet opened)."""
    parsed = parse_db_url(url)
    if parsed.dialect == "sqlite":
        from mesh.store.sqlite import SqliteStore

        return SqliteStore(parsed.target, url)
    from mesh.store.postgres import PostgresStore

    return PostgresStore(parsed.target, url)
