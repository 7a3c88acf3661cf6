"""Async storage: SQLite (aiosqlite, WAL) by default, PostgreSQL (asyncpg) for postgresql://."""

from mesh.store.base import Migration, Store, Tx
from mesh.store.url import DatabaseURL, open_store, parse_db_url

__all__ = ["DatabaseURL", "Migration", "Store", "Tx", "open_store", "parse_db_url"]
