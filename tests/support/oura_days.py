"""Oura days for the LifeOps tests: dates counted back from today, a day's three scores, the XP
the default rules give for them, and the character total to wait for."""

from __future__ import annotations

import datetime as dt
import math

from lifeops_contract.schemas import CharacterGetRequest, CharacterReply
from mesh.client import MeshClient
from tests.support.oura_standin import OuraStandIn

TODAY = dt.datetime.now(dt.UTC).date()

Scores = tuple[int | None, int | None, int | None]  # sleep, readiness, activity
ENDPOINTS = ("daily_sleep", "daily_readiness", "daily_activity")


def day(n: int) -> dt.date:
    """The day `n` days before today (UTC)."""
    return TODAY - dt.timedelta(days=n)


def rules_xp(versions: dict[dt.date, list[Scores]]) -> int:
    """The default rules (WIS = sleep * 0.3, STA = readiness * 0.5, DEX = activity * 0.3,
    floored), per day and stat the best version's XP, summed."""
    total = 0
    for seen in versions.values():
        for i, factor in enumerate((0.3, 0.5, 0.3)):
            total += max(
                math.floor(score * factor) if (score := v[i]) is not None else 0 for v in seen
            )
    return total


def put(api: OuraStandIn, account: str, d: dt.date, scores: Scores) -> None:
    """Serve `account`'s scores of day `d` from the stand-in (a None score: no document)."""
    for endpoint, score in zip(ENDPOINTS, scores, strict=True):
        if score is not None:
            api.put(account, endpoint, d, score)


async def character_sheet(client: MeshClient, uid: str) -> CharacterReply:
    """Stats' character sheet of `uid`."""
    reply: CharacterReply = await client.request("character_get", CharacterGetRequest(user_id=uid))
    return reply


async def total_is(client: MeshClient, uid: str, expected: int) -> bool:
    """Whether `uid`'s total XP is `expected` (a condition for `eventually`)."""
    r = await character_sheet(client, uid)
    return r.success and r.total_xp == expected
