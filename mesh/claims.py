"""The inbox's dedup keys: claiming them (one at a time, or a whole batch in one statement),
and the key of a message that names none of its own."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from mesh import codec
from mesh.store import Tx
from mesh.transport import Inbound

CHUNK = 500  # rows per multi-row statement (SQLite allows 32766 parameters)


DERIVED_PREFIXES = ("req:", "pub:")


def derived_key(topic_key: str, msg: Inbound, payload: Any) -> str:
    """The dedup key of a state-changing message that names none of its own.

    - a request with correlation data: that correlation data and the canonical payload (its
      decoded value re-encoded, so key order and spacing do not matter);
    - a message without correlation data (mosquitto_rr's default, or a bare publish): the
      canonical payload alone.

    Never where the answer goes: a request sent with a response topic its requester cannot read
    (`reply/alice/1` from the `tester` account: the answer is lost) and retried with the right
    one (`reply/tester/1`, the same correlation data) is the same request, answered with the
    original reply, not run twice. The requester's identity is not needed to tell requests
    apart: the correlation data is the requester's own (the mesh's clients use a random UUID per
    request and keep it on retries), and the payload names the user. Two accounts sending the
    same correlation data and the same payload within the window count once: the same activity
    of the same user, and nobody can pre-claim a request whose correlation data they cannot
    guess. A second identical request on purpose (new correlation data) counts again.

    The trade-off: two identical keyless messages within the keyless window (10 minutes by
    default, LIFEOPS_KEYLESS_WINDOW_S) count once: a retry cannot be told from a second
    identical activity. Later, the same message counts again unless the broker marks it a
    redelivery (DUP), which a redelivery after a crash always is. Give each activity a
    `source_ref` (or an `activity_id`) when the same activity really happens twice.
    """
    h = hashlib.sha256()
    body = codec.encode(payload)
    if msg.correlation_data:
        h.update(len(msg.correlation_data).to_bytes(4, "big") + msg.correlation_data + body)
        return f"req:{topic_key}:{h.hexdigest()}"
    h.update(body)
    return f"pub:{topic_key}:{h.hexdigest()}"


async def claim(tx: Tx, key: str, topic_key: str, now: dt.datetime) -> bool:
    """Claim one key; False when it was claimed before."""
    n = await tx.execute(
        "INSERT INTO mesh_inbox (key, topic_key, reply, created_at) VALUES (?, ?, NULL, ?)"
        " ON CONFLICT DO NOTHING",
        key,
        topic_key,
        now.isoformat(),
    )
    return n != 0


async def claim_many(tx: Tx, keys: list[str], topic_key: str, now: dt.datetime) -> set[str]:
    """Claim distinct `keys` in one statement per CHUNK; returns those that were free."""
    got: set[str] = set()
    at = now.isoformat()
    keys = sorted(keys)  # one order for every agent: concurrent claims cannot deadlock
    for start in range(0, len(keys), CHUNK):
        part = keys[start : start + CHUNK]
        values = ", ".join("(?, ?, NULL, ?)" for _ in part)
        args: list[object] = []
        for key in part:
            args += [key, topic_key, at]
        rows = await tx.fetchall(
            f"INSERT INTO mesh_inbox (key, topic_key, reply, created_at) VALUES {values}"
            " ON CONFLICT DO NOTHING RETURNING key",
            *args,
        )
        got.update(r[0] for r in rows)
    return got


async def stored(tx: Tx, keys: list[str]) -> dict[str, tuple[str | None, str]]:
    """key -> (stored reply or None, claimed at) for claimed keys."""
    out: dict[str, tuple[str | None, str]] = {}
    for start in range(0, len(keys), CHUNK):
        part = keys[start : start + CHUNK]
        marks = ", ".join("?" for _ in part)
        for key, reply, created in await tx.fetchall(
            f"SELECT key, reply, created_at FROM mesh_inbox WHERE key IN ({marks})", *part
        ):
            out[key] = (reply, created)
    return out


def keep_reply(tx: Tx, key: str, reply: bytes) -> None:
    tx.defer("UPDATE mesh_inbox SET reply = ? WHERE key = ?", reply.decode("utf-8"), key)


def release(tx: Tx, key: str) -> None:
    """A refused message gives its key back: a corrected one may use it."""
    tx.defer("DELETE FROM mesh_inbox WHERE key = ?", key)


def reclaim(tx: Tx, key: str, now: dt.datetime) -> None:
    tx.defer(
        "UPDATE mesh_inbox SET created_at = ?, reply = NULL WHERE key = ?", now.isoformat(), key
    )
