"""One spelling per person in an agent's store (what makes two ids one person's: ids.py).

`user_ids` maps each folded id to the spelling the agent stored data under first. An agent
admits the users of its messages in the transaction of their first write (`admit`): an id
seen before passes, a new id whose fold is free is recorded, and one whose fold belongs to
another spelling is refused (the caller answers with an error reply and a dead letter that
name both ids). The folded id is the table's primary key, so two instances creating `Alice`
and `alice` at the same moment cannot both succeed: the second insert waits for the first
transaction, finds its row, and refuses.

Users stored before this table existed are registered by its second migration, oldest first:
of two spellings already stored, the older keeps working and the other is refused from then
on (its data stays; the agent logs the pair at startup).

Rows are never deleted, so an id once seen committed stays admitted: `UserRegistry` remembers
those in memory, and a batch of known users costs no query.
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Iterable

from lifeops_contract.ids import fold_user_id, same_person_message
from mesh import HandlerError, Migration, Store, Tx

COMPONENT = "user_ids"  # its own migration component: independent of the agent's versions
MEMORY_MAX = 100_000  # ids remembered as admitted (beyond: forgotten and asked again)

# Ids recorded per open transaction by any registry of this process: seen again in the same
# transaction they are not committed yet (it may still roll back), so not remembered.
_RECORDED: weakref.WeakKeyDictionary[Tx, set[str]] = weakref.WeakKeyDictionary()


def migrations(existing: str) -> tuple[Migration, ...]:
    """The registry's migrations for an agent whose users stored so far are the rows
    `(user_id, seen)` of the SELECT `existing` (one row per user, `seen` ISO-8601 text). SQL's
    `lower(replace(user_id, '-', '_'))` is `fold_user_id` for the ASCII ids check_user_id
    accepts."""
    return (
        Migration(
            1,
            (
                "CREATE TABLE IF NOT EXISTS user_ids ("
                " folded TEXT PRIMARY KEY, user_id TEXT NOT NULL, created_at TEXT NOT NULL)",
            ),
        ),
        Migration(
            2,
            (
                # `WHERE true`: SQLite's parser needs it before ON CONFLICT in INSERT ... SELECT.
                "INSERT INTO user_ids (folded, user_id, created_at)"
                " SELECT lower(replace(user_id, '-', '_')), user_id, COALESCE(seen, '')"
                f" FROM ({existing}) known WHERE true ORDER BY seen, user_id"
                " ON CONFLICT DO NOTHING",
            ),
        ),
    )


async def install(store: Store, existing: str) -> list[tuple[str, str]]:
    """Migrate the registry in an agent's store (`existing`: see `migrations`); returns the
    users stored before that another spelling holds: (refused, holder), to log."""
    await store.migrate(COMPONENT, migrations(existing))
    async with store.read() as tx:
        return await spelled_twice(tx, existing)


async def spelled_twice(tx: Tx, existing: str) -> list[tuple[str, str]]:
    """Users of `existing` (the agent's own query of stored users) refused because another
    spelling of them holds their fold: (refused, holder), to log at startup."""
    rows = await tx.fetchall(
        "SELECT known.user_id, r.user_id FROM"
        f" ({existing}) known JOIN user_ids r ON r.folded = lower(replace(known.user_id, '-', '_'))"
        " WHERE r.user_id <> known.user_id ORDER BY known.user_id"
    )
    return [(r[0], r[1]) for r in rows]


class UserRegistry:
    """`refused = await registry.admit(tx, user_ids, now)`: {id: the spelling that holds its
    fold} for ids that are another's; new ids are recorded in `tx`."""

    def __init__(self) -> None:
        self._known: set[str] = set()  # seen committed: admitted for good

    async def admit(self, tx: Tx, user_ids: Iterable[str], now: dt.datetime) -> dict[str, str]:
        wanted = [u for u in dict.fromkeys(user_ids) if u not in self._known]
        if not wanted:
            return {}
        folds = {u: fold_user_id(u) for u in wanted}
        holders = await _holders(tx, sorted(set(folds.values())))
        mine = _RECORDED.setdefault(tx, set())
        confirmed = [u for u in wanted if holders.get(folds[u]) == u and u not in mine]
        if len(self._known) + len(confirmed) > MEMORY_MAX:
            self._known.clear()
        self._known.update(confirmed)
        new: dict[str, str] = {}  # fold -> the first of the batch to claim it
        for u in wanted:
            if folds[u] not in holders:
                new.setdefault(folds[u], u)
        if new:
            got = await _insert(tx, new, now)
            mine.update(new[f] for f in got)
            holders.update({f: new[f] for f in got})
            lost = sorted(set(new) - got)  # another instance recorded them a moment ago
            if lost:
                holders.update(await _holders(tx, lost))
        return {u: holders[folds[u]] for u in wanted if holders.get(folds[u], u) != u}

    async def check(self, tx: Tx, user_id: str, now: dt.datetime) -> None:
        """Admit one user or refuse it (HandlerError `user_id_taken`)."""
        refused = await self.admit(tx, [user_id], now)
        if user_id in refused:
            raise refusal(user_id, refused[user_id])


def refusal(user_id: str, holder: str) -> HandlerError:
    return HandlerError("user_id_taken", same_person_message(user_id, holder))


async def _holders(tx: Tx, folds: list[str]) -> dict[str, str]:
    marks = ", ".join("?" for _ in folds)
    rows = await tx.fetchall(
        f"SELECT folded, user_id FROM user_ids WHERE folded IN ({marks})", *folds
    )
    return {r[0]: r[1] for r in rows}


async def _insert(tx: Tx, new: dict[str, str], now: dt.datetime) -> set[str]:
    """Record new spellings (in fold order: concurrent batches cannot deadlock); returns the
    folds recorded, not those another transaction holds."""
    folds = sorted(new)
    values = ", ".join("(?, ?, ?)" for _ in folds)
    args: list[object] = []
    for f in folds:
        args += [f, new[f], now.isoformat()]
    rows = await tx.fetchall(
        f"INSERT INTO user_ids (folded, user_id, created_at) VALUES {values}"
        " ON CONFLICT DO NOTHING RETURNING folded",
        *args,
    )
    return {r[0] for r in rows}
