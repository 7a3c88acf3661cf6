"""An installation key per agent: a random secret made on first use and kept in the agent's
database, for ids that outsiders must not be able to compute in advance.

Ids derived from public data with a public uuid5 namespace can be pre-claimed: anyone who may
publish can send an activity under the id a later, real completion will get and so block it.
Derived with this key (HMAC-SHA256), the same inputs still give the same id in this
installation, and nobody outside it can compute one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid

from mesh.store import Migration, Store

MIGRATIONS = (
    Migration(
        1,
        ("CREATE TABLE IF NOT EXISTS mesh_keys ( name TEXT PRIMARY KEY, secret TEXT NOT NULL)",),
    ),
)


async def installation_key(store: Store, name: str) -> bytes:
    """The key called `name` of this installation (created on first use; every instance of the
    agent on the same database gets the same one)."""
    async with store.transaction() as tx:
        await tx.execute(
            "INSERT INTO mesh_keys (name, secret) VALUES (?, ?) ON CONFLICT DO NOTHING",
            name,
            secrets.token_hex(32),
        )
        row = await tx.fetchone("SELECT secret FROM mesh_keys WHERE name = ?", name)
    assert row is not None
    return bytes.fromhex(row[0])


def keyed_uuid(key: bytes, text: str) -> str:
    """A UUID (version 4 layout) from HMAC-SHA256(key, text): stable, and secret without key."""
    digest = hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))
