"""Oura days kept by LifeOps: each user and day once, a changed day as its next revision.

One path for every source (`lifeops/oura/import` requests, the scheduled Oura API sync): a new
day goes to Stats as `lifeops/oura/synced` revision 0; a known day whose scores changed (Oura
completes a partial day later, or revises a score) is stored and sent as the next revision;
an unchanged day is skipped. Each goes out with a receipt whose record id names the version.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable

from lifeops_agent import repository
from lifeops_agent.repository import OuraVersion, StoredOuraDay
from lifeops_contract.schemas import OuraDay, OuraImportReply, OuraScores, OuraSynced
from lifeops_contract.user_registry import UserRegistry
from mesh import HandlerError, Tx, codec

_NS = uuid.UUID("0b7d2f5e-3c1a-4e8b-9f60-7a5d4c3b2a19")
MAX_OURA_DAYS = 400
SCORES = ("sleep", "readiness", "activity")

Send = Callable[[OuraSynced, str], Awaitable[None]]
"""Stage `lifeops/oura/synced` with a receipt, under the given record id."""


def record_id(user_id: str, day: dt.date, revision: int) -> str:
    """A version's receipt id; revision 0 keeps the id days always had."""
    name = f"oura:{user_id}:{day.isoformat()}"
    return str(uuid.uuid5(_NS, name if revision == 0 else f"{name}:rev{revision}"))


def merged(stored: OuraScores, new: OuraScores) -> OuraScores:
    """A score missing from the new version keeps its stored value (a file of one endpoint
    does not erase the others)."""
    return OuraScores(
        **{
            name: getattr(new, name) if getattr(new, name) is not None else getattr(stored, name)
            for name in SCORES
        }
    )


def check(days: list[OuraDay]) -> None:
    if len(days) > MAX_OURA_DAYS:
        raise HandlerError("too_many_days", f"at most {MAX_OURA_DAYS} days per request")
    for d in days:
        for name in SCORES:
            score = getattr(d.scores, name)
            if score is not None and not 0 <= score <= 100:
                raise HandlerError("invalid_score", f"{d.date}: {name} score {score}")


def plan(known: dict[dt.date, StoredOuraDay], days: list[OuraDay]) -> list[OuraVersion]:
    """What to store of `days`, in order, given the stored versions `known`: a new day as
    revision 0, a changed one as its next revision (its missing scores kept: `merged`); an
    unchanged day is not stored (skipped). Pure: a day twice in `days` sees its first."""
    known = dict(known)
    out = []
    for d in days:
        prior = known.get(d.date)
        if prior is None:
            version = OuraVersion(d.date, d.scores, 0)
        else:
            before = codec.decode(prior.scores.encode(), OuraScores)
            scores = merged(before, d.scores)
            if scores == before:
                continue
            version = OuraVersion(d.date, scores, prior.revision + 1)
        known[d.date] = StoredOuraDay(codec.encode(version.scores).decode(), version.revision)
        out.append(version)
    return out


async def keep_days(
    tx: Tx, user_id: str, days: list[OuraDay], now: dt.datetime, send: Send
) -> OuraImportReply:
    """Store what is new or changed in `days` and stage it for Stats, in `tx`, as load ->
    compute -> write: the load takes the user's lock (the scheduled sync and
    `lifeops/oura/import` on any agent take turns: a day another agent stored a moment ago is
    read here and becomes its next revision) and refuses a user id that is another stored
    user's spelled differently (lifeops_contract.user_registry) before it reads."""
    check(days)
    known = await repository.load_oura_days(
        tx, user_id, [d.date for d in days], UserRegistry(), now
    )
    stored = await repository.write_oura_days(tx, user_id, plan(known, days), now)
    imported = sum(v.revision == 0 for v in stored)
    for v in stored:
        await send(
            OuraSynced(user_id=user_id, date=v.day, scores=v.scores, revision=v.revision),
            record_id(user_id, v.day, v.revision),
        )
    return OuraImportReply(
        imported=imported, skipped=len(days) - len(stored), revised=len(stored) - imported
    )
