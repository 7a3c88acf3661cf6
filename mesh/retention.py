"""Bounded growth: what the runtime's tables keep, and for how long.

- mesh_inbox (dedup keys): `dedup_days`, longer than anything can be redelivered: a durable
  session lasts at most 14 days on the project's broker (persistent_client_expiration) and the
  mesh's own requests expire with their timeout. Agents that must recognise older repeats keep
  their own record (Stats finds an activity by its id or its source_ref whatever its age).
- mesh_outbox: delivered rows after `delivered_days`; undelivered ones are never pruned.
- mesh_receipts: rows whose receipt is stored, after `delivered_days`.
- mesh_dead_letters: after `dead_letter_days`, and beyond `max_dead_letters` the oldest go;
  beyond `max_dead_letter_bytes` (record and stored payload) the oldest go when one is written
  (mesh.dlq), not only at the next prune.

One pass deletes in chunks (no long lock on a big table); every pruned row is counted in
`mesh_pruned_rows_total{table}`.
"""

from __future__ import annotations

import datetime as dt
import logging

import msgspec

from mesh.metrics import Metrics
from mesh.store import Store

log = logging.getLogger("mesh.retention")

CHUNK = 5000


class Retention(msgspec.Struct, frozen=True, kw_only=True):
    dedup_days: float = 15.0
    delivered_days: float = 2.0
    dead_letter_days: float = 30.0
    max_dead_letters: int = 10_000
    max_dead_letter_bytes: int = 64 * 1024 * 1024


# table, key column, time column, condition that makes a row prunable, which window
_RULES = (
    ("mesh_inbox", "key", "created_at", "1 = 1", "dedup_days"),
    ("mesh_outbox", "id", "sent_at", "sent_at IS NOT NULL", "delivered_days"),
    ("mesh_receipts", "id", "receipt_at", "receipt_at IS NOT NULL", "delivered_days"),
    ("mesh_dead_letters", "id", "received_at", "1 = 1", "dead_letter_days"),
)
TABLES = tuple(rule[0] for rule in _RULES)


async def prune(
    store: Store, policy: Retention, metrics: Metrics, now: dt.datetime | None = None
) -> dict[str, int]:
    """One pass over every table; returns rows deleted per table."""
    now = now or dt.datetime.now(dt.UTC)
    out: dict[str, int] = {}
    for table, key, column, prunable, window in _RULES:
        cutoff = (now - dt.timedelta(days=float(getattr(policy, window)))).isoformat()
        where = f"{prunable} AND {column} < ?"
        out[table] = await _delete_chunked(store, table, key, where, (cutoff,))
    out["mesh_dead_letters"] += await _cap(store, policy.max_dead_letters)
    for table, n in out.items():
        if n:
            metrics.pruned.labels(table).inc(n)
            log.info("pruned %d rows of %s", n, table)
    return out


async def _delete_chunked(
    store: Store, table: str, key: str, where: str, args: tuple[object, ...]
) -> int:
    total = 0
    while True:
        async with store.transaction() as tx:
            n = await tx.execute(
                f"DELETE FROM {table} WHERE {key} IN"
                f" (SELECT {key} FROM {table} WHERE {where} LIMIT {CHUNK})",
                *args,
            )
        total += max(n, 0)
        if n < CHUNK:
            return total


async def _cap(store: Store, keep: int) -> int:
    """Dead letters beyond `keep`: the oldest go."""
    async with store.transaction() as tx:
        row = await tx.fetchone("SELECT COUNT(*) FROM mesh_dead_letters")
    excess = int(row[0]) - keep if row else 0
    if excess <= 0:
        return 0
    async with store.transaction() as tx:
        cut = await tx.fetchone(
            "SELECT received_at FROM mesh_dead_letters ORDER BY received_at LIMIT 1 OFFSET ?",
            excess - 1,
        )
    if cut is None:
        return 0
    return await _delete_chunked(store, "mesh_dead_letters", "id", "received_at <= ?", (cut[0],))
