"""`lifeops-mesh dlq list|replay`: inspect an agent's dead letters and send fixed ones back."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from lifeops_contract import contract
from mesh import ConfigError, DeadLetter, MeshClient, codec, open_store


class StoredDeadLetter(msgspec.Struct):
    id: str
    record: DeadLetter
    replayed_at: str | None


async def list_dead_letters(
    db_url: str, *, include_replayed: bool = False, limit: int = 100
) -> list[StoredDeadLetter]:
    async with open_store(db_url) as store:
        async with store.read() as tx:
            rows = await tx.fetchall(
                "SELECT id, record, replayed_at FROM mesh_dead_letters"
                + ("" if include_replayed else " WHERE replayed_at IS NULL")
                + " ORDER BY received_at DESC LIMIT ?",
                limit,
            )
    return [StoredDeadLetter(r[0], codec.decode(r[1].encode(), DeadLetter), r[2]) for r in rows]


def render(items: list[StoredDeadLetter]) -> str:
    if not items:
        return "no dead letters"
    lines = []
    for it in items:
        d = it.record
        replayed = f" (replayed {it.replayed_at})" if it.replayed_at else ""
        lines.append(
            f"{it.id}  {d.received_at:%Y-%m-%d %H:%M:%S}  {d.topic}  "
            f"{d.error.code}: {d.error.message[:100]}{replayed}"
        )
        payload = d.payload if d.payload_encoding == "utf-8" else f"<base64> {d.payload}"
        lines.append(f"    payload: {payload[:200]}")
    return "\n".join(lines)


async def replay(db_url: str, broker_url: str, dead_id: str, payload: str | None) -> Any:
    """Send a dead letter (or a fixed payload) to its topic again, as a request when the topic
    is one; marks it replayed once the mesh accepted it."""
    async with open_store(db_url) as store:
        async with store.read() as tx:
            row = await tx.fetchone(
                "SELECT record, raw FROM mesh_dead_letters WHERE id = ?", dead_id
            )
        if row is None:
            raise ConfigError(f"no dead letter {dead_id!r} in {db_url}")
        record = codec.decode(row[0].encode(), DeadLetter)
        original = bytes(row[1]) if row[1] is not None else None
        if payload is not None:
            body = payload.encode()
        elif original is not None and len(original) == record.payload_length:
            body = original  # the whole payload, as it arrived
        elif record.payload_encoding == "utf-8" and not record.payload_truncated:
            body = record.payload.encode()
        else:
            raise ConfigError(
                "the original payload is not stored whole: pass a fixed one with --payload"
            )
        async with MeshClient(broker_url, contract()) as client:
            found = client.contract.match(record.topic)
            if found is None:
                raise ConfigError(f"{record.topic!r} is not a contract topic; nothing to replay")
            entry, params = found
            value = codec.decode(body, entry.schema_type, entry.format)
            if entry.reply_schema is not None:
                reply = await client.request(entry.key, value, params=params)
            else:
                await client.transport.publish(record.topic, body, qos=entry.qos)
                reply = None
        async with store.transaction() as tx:
            await tx.execute(
                "UPDATE mesh_dead_letters SET replayed_at = ? WHERE id = ?",
                dt.datetime.now(dt.UTC).isoformat(),
                dead_id,
            )
    return reply
